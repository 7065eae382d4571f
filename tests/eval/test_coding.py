"""The coding harness: real HumanEval/MBPP data, sandboxed checks, pass@k, CLI table + JSON, scripted model."""

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # NOTE: the package is not installed in the dev venv
    sys.path.insert(0, str(ROOT))

from m3.code.model import ScriptedModel  # noqa: E402
from m3.code.sandbox import Limits, Sandbox  # noqa: E402
from m3.eval import coding  # noqa: E402

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def by_prompt(problems, reply_for):
    """A scripted model answering each problem through `reply_for(problem)`."""
    table = {p.prompt: p for p in problems}
    return ScriptedModel(respond=lambda messages: reply_for(table[messages[-1]["content"]]))


def test_humaneval_data_comes_from_the_package():
    problems = coding.load_humaneval()
    assert len(problems) == 164
    assert problems[0].task_id == "HumanEval/0" and problems[0].entry_point == "has_close_elements"
    assert coding.humaneval_path().name == "HumanEval.jsonl.gz"


def test_pass_at_k_matches_the_combinatorial_formula():
    for n, c, k in [(10, 3, 1), (10, 3, 5), (20, 0, 5), (5, 5, 2), (200, 17, 10)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert coding.pass_at_k(n, c, k) == pytest.approx(exact)
    assert coding.pass_at_k(5, 1, 1) == pytest.approx(0.2)


def test_build_program_accepts_a_body_or_a_whole_function():
    p = coding.load_humaneval(limit=1)[0]
    body = p.reference[len(p.stub) :]
    for completion in (body, f"```python\n{p.reference}\n```"):
        program = coding.build_program(p, completion)
        assert program.endswith(f"check({p.entry_point})\n")
        compile(program, "x", "exec")


@needs_bwrap
def test_humaneval_scripted_pass_rate():
    problems = coding.load_humaneval(limit=10)
    good = {p.task_id for p in problems[:6]}

    def reply(p):  # canonical solutions for 6 problems, a wrong answer or a hang for the others
        if p.task_id in good:
            return f"```python\n{p.reference}\n```"
        if p.task_id == problems[-1].task_id:
            return f"```python\ndef {p.entry_point}(*a, **k):\n    while True:\n        pass\n```"
        return f"```python\ndef {p.entry_point}(*a, **k):\n    return None\n```"

    sandbox = Sandbox(Limits(timeout_s=5, cpu_s=5))
    result = coding.evaluate(by_prompt(problems, reply), problems, sandbox, concurrency=4)
    assert result["pass@1"] == pytest.approx(0.6)
    verdicts = {r["task_id"]: r["correct"] for r in result["problems"]}
    assert {t for t, ok in verdicts.items() if ok} == good
    hang = next(r for r in result["problems"] if r["task_id"] == problems[-1].task_id)
    assert hang["samples"][0]["error"] == "timeout"
    assert result["isolation"].startswith("bwrap")


@needs_bwrap
def test_mbpp_pass_at_k_with_samples(tmp_path):
    problems = coding.load_mbpp(limit=4) if coding.MBPP_DEFAULT.exists() else None
    if problems is None:  # a tiny stand-in with the same fields when shared/data is absent
        rows = [
            {
                "task_id": 11 + i,
                "text": f"Return {i}.",
                "code": f"def f{i}():\n    return {i}",
                "test_list": [f"assert f{i}() == {i}"],
                "test_setup_code": "",
                "challenge_test_list": [],
            }
            for i in range(4)
        ]
        data = tmp_path / "mbpp.jsonl"
        data.write_text("\n".join(json.dumps(r) for r in rows))
        problems = coding.load_mbpp(data)
    counter = {}

    def reply(p):  # problem i gets i right answers out of 4 samples
        i = problems.index(p)
        counter[p.task_id] = counter.get(p.task_id, 0) + 1
        return f"```python\n{p.reference}\n```" if counter[p.task_id] <= i else "```python\nraise SystemExit(1)\n```"

    model = by_prompt(problems, reply)
    result = coding.evaluate(model, problems, Sandbox(Limits(timeout_s=10)), n_samples=4, ks=(1, 2), concurrency=1)
    assert [r["correct"] for r in result["problems"]] == [0, 1, 2, 3]
    assert result["pass@1"] == pytest.approx((0 + 1 / 4 + 2 / 4 + 3 / 4) / 4)
    expected2 = sum(1 - math.comb(4 - c, 2) / math.comb(4, 2) for c in range(4)) / 4
    assert result["pass@2"] == pytest.approx(expected2)


@needs_bwrap
def test_cli_prints_a_table_and_writes_json(tmp_path, monkeypatch, capsys):
    import argparse

    problems = coding.load_humaneval(limit=3)
    model = by_prompt(problems, lambda p: f"```python\n{p.reference}\n```")
    monkeypatch.setattr("m3.code.cli.build_model", lambda args: model)
    parser = argparse.ArgumentParser(prog="m3")
    coding.add_coding_parsers(parser.add_subparsers(dest="command"))
    out = tmp_path / "he.json"
    args = parser.parse_args(["humaneval", "--limit", "3", "--model", "tiny", "--out", str(out)])
    assert args.base_url.endswith("/v1") and callable(args.func)
    assert args.func(args) == 0
    printed, progress = capsys.readouterr()
    assert "humaneval" in printed and "100.0%" in printed
    assert progress.splitlines()[-1].startswith("[3/3] passed 3 · ")  # a long run reports as it goes
    saved = json.loads(out.read_text())
    assert saved["benchmark"] == "humaneval" and saved["model"] == "tiny" and saved["pass@1"] == 1.0
    assert saved["num_problems"] == 3 and len(saved["problems"]) == 3
