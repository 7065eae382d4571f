"""review / tests / docs / fix workflows with a scripted model on small real repositories."""

import ast
import json
import subprocess

from conftest import make_workspace, needs_bwrap

from m3.code.docs import document, insert_docstrings, overview_markdown
from m3.code.fix import fix_error, render_fix, traceback_files
from m3.code.model import ScriptedModel
from m3.code.review import get_diff, review
from m3.code.sandbox import Limits, Sandbox
from m3.code.testgen import generate_tests
from m3.code.worktree import ensure_repo

CALC = "def add(a, b):\n    return a + b\n\n\ndef mean(xs):\n    return sum(xs) / len(xs) + 1\n"


def test_review_returns_validated_structured_findings(tmp_path):
    ws = make_workspace(tmp_path / "ws", {"calc.py": "def add(a, b):\n    return a + b\n"})
    ensure_repo(ws)
    (ws / "calc.py").write_text(CALC)
    diff = get_diff(ws)
    assert "+def mean" in diff
    bad = {
        "findings": [
            {"severity": "urgent", "file": "calc.py", "line": 6, "message": "off by one"},
            {"severity": "major", "file": "nope.py", "line": 1, "message": "x"},
        ]
    }
    good = {
        "findings": [
            {
                "severity": "minor",
                "file": "calc.py",
                "line": 5,
                "message": "empty list divides by zero",
                "suggestion": "raise ValueError for []",
            },
            {"severity": "critical", "file": "calc.py", "line": 6, "message": "mean adds 1", "suggestion": "drop + 1"},
        ]
    }
    model = ScriptedModel([json.dumps(bad), json.dumps(good)])
    findings, dropped = review(model, diff)
    assert dropped == []
    assert [(f.severity, f.line) for f in findings] == [("critical", 6), ("minor", 5)]
    repair = model.calls[1][-1]["content"]
    assert "severity 'urgent'" in repair and "'nope.py' is not in the diff" in repair


@needs_bwrap
def test_tests_workflow_keeps_passing_tests_and_explains_failures(tmp_path):
    ws = make_workspace(tmp_path / "ws", {"calc.py": CALC})
    generated = (
        "```python\nimport pytest\nfrom calc import add, mean\n\n\ndef test_add():\n    assert add(2, 3) == 5\n\n\n"
        "@pytest.mark.parametrize('xs', [[1, 2, 3], [4]])\ndef test_mean(xs):\n"
        "    assert mean(xs) == sum(xs) / len(xs)\n"
        "\n\ndef test_add_negative():\n    assert add(-1, -1) == -2\n```"
    )
    res = generate_tests(ScriptedModel([generated]), ws, "calc.py", Sandbox(Limits(timeout_s=60)))
    assert res.out_path == "tests/test_calc_m3.py"
    assert res.passed == ["test_add", "test_add_negative"]
    assert set(res.failed) == {"test_mean[xs0]", "test_mean[xs1]"} and "assert" in res.failed["test_mean[xs0]"]
    kept = (ws / res.out_path).read_text()
    assert "def test_mean" not in kept and "parametrize" not in kept and "def test_add_negative" in kept


def test_docs_inserts_missing_docstrings_only(tmp_path):
    src = (
        'def documented():\n    """Already here."""\n    return 1\n\n\nclass Box:\n    def get(self, k):\n'
        "        return k\n\n\ndef proc(d, k):\n    return [x[k] for x in d]\n"
    )
    f = tmp_path / "mod.py"
    f.write_text(src)
    reply = {
        "module": "Helpers for boxes.",
        "docstrings": {
            "Box": "A box.",
            "Box.get": "Return k.\n\nArgs:\n  k: key",
            "proc": 'Pluck "k" from each dict.',
            "documented": "no",
        },
    }
    res = document(ScriptedModel([json.dumps(reply)]), f)
    new = f.read_text()
    tree = ast.parse(new)
    assert ast.get_docstring(tree) == "Helpers for boxes."
    funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert ast.get_docstring(funcs["documented"]) == "Already here."
    assert ast.get_docstring(funcs["get"]).startswith("Return k.") and ast.get_docstring(funcs["Box"]) == "A box."
    assert ast.get_docstring(funcs["proc"]) == 'Pluck "k" from each dict.'
    assert sorted(res.files[str(f)]) == ["Box", "Box.get", "proc"]
    assert "Helpers for boxes." in overview_markdown(res, tmp_path)
    assert insert_docstrings(new, {"proc": "again"}, "again") == new  # idempotent once documented


@needs_bwrap
def test_fix_reproduces_fixes_and_reports_root_cause(tmp_path):
    ws = make_workspace(tmp_path / "ws", {"calc.py": CALC, "app.py": "from calc import mean\nprint(mean([2, 4]))\n"})
    log = (
        f'Traceback (most recent call last):\n  File "{ws}/app.py", line 2, in <module>\n'
        "AssertionError: mean([2, 4]) returned 4.0, expected 3.0\n"
    )
    assert traceback_files(log, ws) == ["app.py"]
    passing_repro = {
        "test_file": "tests/test_mean.py",
        "test_code": "from calc import mean\n\ndef test_m():\n    assert mean([1]) >= 0\n",
    }
    repro = {
        "test_file": "tests/test_mean.py",
        "test_code": "from calc import mean\n\n\ndef test_mean():\n    assert mean([2, 4]) == 3.0\n",
    }
    wrong_fix = {"file": "calc.py", "line": 6, "search": "return a + b", "replace": "return a + b + 0"}
    fix = {
        "file": "calc.py",
        "line": 6,
        "root_cause": "mean adds a stray 1",
        "causal_chain": ["mean returns sum/len + 1", "app prints 4.0 instead of 3.0"],
        "search": "return sum(xs) / len(xs) + 1",
        "replace": "return sum(xs) / len(xs)",
    }
    model = ScriptedModel([json.dumps(x) for x in (passing_repro, repro, wrong_fix, fix)])
    res = fix_error(model, ws, log, Sandbox(Limits(timeout_s=60)))
    assert res.ok and res.stage == "done", res.notes
    assert res.place == "calc.py:6" and res.causal_chain[0].startswith("mean returns")
    assert "-    return sum(xs) / len(xs) + 1" in res.diff and "+    return sum(xs) / len(xs)\n" in res.diff
    assert res.notes == [
        "reproduction attempt passes, so it does not reproduce the bug",
        "a fix attempt left the reproduction failing",
    ]
    assert "return sum(xs) / len(xs)\n" in (ws / "calc.py").read_text()  # applied to the workspace
    assert (ws / "tests/test_mean.py").exists()
    report = render_fix(res)
    for section in ("## Reproduction", "## Faulty place", "## Causal chain", "## Fix", "## Regression test"):
        assert section in report
    r = subprocess.run(["python", "-m", "pytest", "-q", "tests/test_mean.py"], cwd=ws, capture_output=True)
    assert r.returncode == 0
