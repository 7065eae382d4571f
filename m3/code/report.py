"""The final report of a run: outcome, files changed on the results branch, tests, tokens, duration, tasks.

Built from the run store and git only, so it can be produced again at any time (`m3 code status --report`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from m3.code import worktree as wtree
from m3.code.store import Store


def parse_test_counts(text: str) -> dict[str, int]:
    """pytest's closing line ('3 passed, 1 failed in 0.1s') as counts; empty when there is none."""
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|errors?|skipped)", text)}


def build_report(store: Store, run_id: str) -> dict:
    run = store.get_run(run_id)
    tasks = store.tasks(run_id)
    files = []
    if run["base_commit"]:
        try:
            files = wtree.changed_files(Path(run["workspace"]), run["base_commit"], run["branch"])
        except wtree.GitError:
            files = []
    tests = None
    for e in store.events(run_id, kind="tests"):
        d = e["data"]
        tests = {"cmd": d["cmd"], "returncode": d["returncode"], **parse_test_counts(d["stdout"] + d["stderr"])}
    fallback = store.events(run_id, kind="plan_fallback")
    planning = {"attempts": len(store.events(run_id, kind="plan_attempt")), "fallback": bool(fallback)}
    return {
        "run_id": run_id,
        "task": run["task"],
        "status": run["status"],
        "reason": run["reason"],
        "isolation": run["isolation"],
        "branch": run["branch"],
        "duration_s": round(run["elapsed_s"], 2),
        "num_tokens": run["num_tokens"],
        "num_calls": run["num_calls"],
        "files_changed": [{"status": s, "path": p} for s, p in files],
        "tests": tests,
        "planning": planning,
        "tasks": [
            {
                k: t[k]
                for k in (
                    "id",
                    "agent",
                    "status",
                    "attempts",
                    "num_steps",
                    "num_tokens",
                    "commit_sha",
                    "files",
                    "summary",
                    "error",
                )
            }
            for t in tasks
        ],
        "conflicts": [{"task": t["id"], "error": t["error"]} for t in tasks if t["status"] == "conflict"],
    }


def render_report(report: dict) -> str:
    lines = [
        f"# m3 code run {report['run_id']}: {report['status']}"
        + (f" ({report['reason']})" if report["reason"] else ""),
        f"task: {report['task']}",
        f"duration: {report['duration_s']}s · tokens: {report['num_tokens']} · model calls: {report['num_calls']}",
        f"isolation: {report['isolation']}",
        f"results on branch {report['branch']} (merge with: git merge {report['branch']})",
        "",
        f"files changed ({len(report['files_changed'])}):",
        *[f"  {f['status']} {f['path']}" for f in report["files_changed"]],
    ]
    planning = report.get("planning") or {}
    if planning.get("fallback"):
        lines += ["", f"plan: no valid plan in {planning['attempts']} tries; ran the whole task as one sub-task"]
    t = report["tests"]
    if t:
        counts = ", ".join(f"{v} {k}" for k, v in t.items() if k not in ("cmd", "returncode")) or "no counts"
        lines += ["", f"tests: `{t['cmd']}` exit {t['returncode']}: {counts}"]
    lines += ["", "tasks:"]
    for task in report["tasks"]:
        note = (
            (task["error"] or task["summary"] or "").splitlines()[0][:100] if (task["error"] or task["summary"]) else ""
        )
        lines.append(
            f"  {task['id']:<16} {task['status']:<9} {task['agent'] or '-':<12} steps={task['num_steps']}"
            f" tokens={task['num_tokens']} {note}"
        )
    for c in report["conflicts"]:
        lines.append(f"  conflict: {c['task']}: {c['error']}")
    return "\n".join(lines)


def save_report(store: Store, run_id: str) -> dict:
    report = build_report(store, run_id)
    store.update_run(run_id, report=json.dumps(report))
    return report
