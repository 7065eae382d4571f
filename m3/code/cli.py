"""`m3 code ...`: run / resume / status of agent-cluster runs, and the review, tests, docs, fix workflows.

`add_code_parser(subparsers)` registers everything on the main `m3` parser; each sub-command sets `func`
(args -> exit code). `python -m m3.code.cli ...` works on its own too (used by the kill -9 resume test).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_model_args(p: argparse.ArgumentParser) -> None:
    """The endpoint flags every model-using command shares (also used by `m3 eval humaneval|mbpp`)."""
    p.add_argument(
        "--base-url",
        default=os.environ.get("M3_BASE_URL", "http://127.0.0.1:8000/v1"),
        help="OpenAI-compatible endpoint (env M3_BASE_URL)",
    )
    p.add_argument("--api-key", default=os.environ.get("M3_API_KEY"), help="Bearer key (env M3_API_KEY)")
    p.add_argument("--model", default="default", help="model name sent to the endpoint")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds per model call")


def add_sandbox_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--unsafe-no-sandbox", action="store_true", help="run generated code without bubblewrap")
    p.add_argument("--timeout-s", type=float, default=60.0, help="wall clock per sandboxed command")
    p.add_argument("--cpu-s", type=int, default=60, help="CPU seconds per sandboxed command")
    p.add_argument("--memory-mb", type=int, default=2048, help="address space per sandboxed command")


def build_model(args):
    from m3.code.model import ModelSpec

    return ModelSpec(args.base_url, args.api_key, args.model, args.request_timeout).build()


def build_limits(args):
    from m3.code.sandbox import Limits

    return Limits(timeout_s=args.timeout_s, cpu_s=args.cpu_s, memory_mb=args.memory_mb)


def _runner(args, model):
    from m3.code.agents import DEFAULT_AGENTS, load_agents
    from m3.code.local import LocalExecutor
    from m3.code.model import ModelSpec
    from m3.code.scheduler import Runner

    agents = load_agents(args.agents) if getattr(args, "agents", None) else list(DEFAULT_AGENTS)
    if args.executor == "ray":
        from m3.code.ray_executor import RayExecutor

        spec = ModelSpec(args.base_url, args.api_key, args.model, args.request_timeout)
        executor = RayExecutor(spec, address=args.address, max_workers=args.max_parallel)
    else:
        executor = LocalExecutor(model, max_workers=args.max_parallel)
    return Runner(args.workspace, model, executor, agents)


def _budget(args):
    from m3.code.budget import Budget

    return Budget(args.max_tokens, args.max_calls, args.max_wall_s)


def _finish_run(runner, run_id: str, as_json: bool) -> int:
    from m3.code.report import render_report, save_report

    report = save_report(runner.store, run_id)
    print(json.dumps(report, indent=2) if as_json else render_report(report))
    return 0 if report["status"] == "done" else 1


def cmd_run(args) -> int:
    from m3.code.progress import LiveView
    from m3.code.scheduler import RunConfig

    config = RunConfig(
        max_parallel=args.max_parallel,
        max_steps=args.max_steps,
        budget=_budget(args),
        limits=build_limits(args),
        unsafe=args.unsafe_no_sandbox,
        test_cmd=args.test_cmd,
        max_reply_tokens=args.max_reply_tokens,
    )
    runner = _runner(args, build_model(args))
    with LiveView(runner.store) as view:
        runner.on_update = view.update
        run_id = runner.start(args.task, config, run_id=args.run_id)
    return _finish_run(runner, run_id, args.json)


def cmd_resume(args) -> int:
    from m3.code.progress import LiveView

    runner = _runner(args, build_model(args))
    budget = _budget(args) if any(v is not None for v in (args.max_tokens, args.max_calls, args.max_wall_s)) else None
    with LiveView(runner.store) as view:
        runner.on_update = view.update
        runner.resume(args.run_id, retry_failed=args.retry_failed, budget=budget)
    return _finish_run(runner, args.run_id, args.json)


def cmd_status(args) -> int:
    from rich.console import Console

    from m3.code.progress import status_view
    from m3.code.report import build_report
    from m3.code.scheduler import default_store_path
    from m3.code.store import RunNotFound, Store

    path = default_store_path(Path(args.workspace).resolve())
    if not path.exists():
        print(f"no runs in {args.workspace}", file=sys.stderr)
        return 1
    store = Store(path)
    if not args.run_id:
        for r in store.list_runs():
            print(f"{r['id']}  {r['status']:<9} {r['num_tokens']:>8} tokens  {r['task'][:70]}")
        return 0
    try:
        if args.json:
            print(json.dumps(build_report(store, args.run_id), indent=2))
        else:
            Console().print(status_view(store, args.run_id))
    except RunNotFound as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_review(args) -> int:
    from m3.code.review import get_diff, render_findings, review

    diff = (
        Path(args.diff_file).read_text() if args.diff_file else get_diff(Path(args.workspace), args.range, args.staged)
    )
    findings, problems = review(build_model(args), diff)
    if args.json:
        print(json.dumps({"findings": [f.to_dict() for f in findings], "dropped": problems}, indent=2))
    else:
        print(render_findings(findings))
        if problems:
            print(f"({len(problems)} invalid findings dropped: {problems[0]} ...)", file=sys.stderr)
    return 0


def cmd_tests(args) -> int:
    from m3.code.sandbox import Sandbox
    from m3.code.testgen import generate_tests

    ws = Path(args.workspace).resolve()
    sandbox = Sandbox(build_limits(args), unsafe=args.unsafe_no_sandbox)
    res = generate_tests(build_model(args), ws, args.file, sandbox, args.out)
    print(f"kept {len(res.passed)} passing tests" + (f" in {res.out_path}" if res.out_path else " (nothing written)"))
    for name, why in res.failed.items():
        print(f"  dropped {name}: {why}")
    return 0 if res.out_path else 1


def cmd_docs(args) -> int:
    from m3.code.docs import document, overview_markdown

    path = Path(args.path).resolve()
    res = document(build_model(args), path, write=not args.dry_run)
    for f, names in res.files.items():
        print(f"{f}: {len(names)} docstrings" + (" (dry run)" if args.dry_run else ""))
    for f, why in res.skipped.items():
        print(f"{f}: skipped: {why}", file=sys.stderr)
    md = overview_markdown(res, path if path.is_dir() else path.parent)
    if args.out:
        Path(args.out).write_text(md)
    else:
        print(md)
    return 0


def cmd_fix(args) -> int:
    from m3.code.fix import fix_error, render_fix
    from m3.code.sandbox import Sandbox

    log = sys.stdin.read() if args.error == "-" else Path(args.error).read_text()
    sandbox = Sandbox(build_limits(args), unsafe=args.unsafe_no_sandbox)
    res = fix_error(build_model(args), Path(args.workspace), log, sandbox, apply=not args.dry_run)
    text = render_fix(res)
    if args.report:
        Path(args.report).write_text(text)
    print(text)
    return 0 if res.ok else 1


def refusing_without_sandbox(func):
    """Turn a missing bubblewrap into a clear message and exit code 2 instead of a traceback."""

    def wrapped(args) -> int:
        from m3.code.sandbox import SandboxUnavailable

        try:
            return func(args)
        except SandboxUnavailable as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    return wrapped


def add_code_parser(subparsers) -> argparse.ArgumentParser:
    code = subparsers.add_parser("code", help="MiniMax Code: the coding agent cluster")
    sub = code.add_subparsers(dest="code_command", required=True)

    def command(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--workspace", default=".", help="the git repository to work in (created if missing)")
        add_model_args(p)
        p.set_defaults(func=refusing_without_sandbox(func))
        return p

    for name, func, help in (
        ("run", cmd_run, "plan a task and run it with the agent cluster"),
        ("resume", cmd_resume, "continue a run after a crash, kill or budget stop"),
    ):
        p = command(name, func, help)
        p.add_argument("run_id" if name == "resume" else "task")
        p.add_argument("--agents", help="agents file (.toml/.yaml) with an 'agents' list")
        p.add_argument("--executor", choices=("local", "ray"), default="local")
        p.add_argument("--address", help="Ray cluster address (with --executor ray); default: start a local one")
        p.add_argument("--max-parallel", type=int, default=4, help="sub-tasks in flight at once")
        p.add_argument("--max-tokens", type=int, help="run-wide token budget")
        p.add_argument("--max-calls", type=int, help="run-wide model-call budget")
        p.add_argument("--max-wall-s", type=float, help="run-wide wall-clock budget (seconds, across resumes)")
        p.add_argument("--json", action="store_true", help="print the final report as JSON")
        add_sandbox_args(p)
        if name == "run":
            p.add_argument("--max-steps", type=int, default=20, help="agent steps per sub-task")
            p.add_argument("--test-cmd", help="command run on the merged result for the report")
            p.add_argument(
                "--max-reply-tokens", type=int, help="cap on each model reply (default: 2048 planning, 1024 agents)"
            )
            p.add_argument("--run-id", help="choose the run id (default: time + random)")
        else:
            p.add_argument("--retry-failed", action="store_true", help="also rerun failed and blocked sub-tasks")
    p = command("status", cmd_status, "show a run's DAG and progress (no RUN_ID: list runs)")
    p.add_argument("run_id", nargs="?")
    p.add_argument("--json", action="store_true")
    p = command("review", cmd_review, "review a diff or commit range: structured findings")
    p.add_argument("range", nargs="?", help="A..B, or one commit; default: working tree vs HEAD")
    p.add_argument("--staged", action="store_true", help="review staged changes")
    p.add_argument("--diff-file", help="review this diff file instead of asking git")
    p.add_argument("--json", action="store_true")
    p = command("tests", cmd_tests, "generate pytest tests for FILE, keep those that pass")
    p.add_argument("file", help="the module to test, relative to the workspace")
    p.add_argument("--out", help="test file to write (default tests/test_<name>_m3.py)")
    add_sandbox_args(p)
    p = command("docs", cmd_docs, "add missing docstrings and a module overview")
    p.add_argument("path", help="a .py file or a directory")
    p.add_argument("--out", help="write the overview markdown here (default: print it)")
    p.add_argument("--dry-run", action="store_true", help="do not modify files")
    p = command("fix", cmd_fix, "reproduce an error with a test, fix it, and report the root cause")
    p.add_argument("--error", required=True, help="file with the error log / traceback ('-' for stdin)")
    p.add_argument("--report", help="also write the root-cause report (markdown) here")
    p.add_argument("--dry-run", action="store_true", help="do not apply the fix to the workspace")
    add_sandbox_args(p)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="m3")
    add_code_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
