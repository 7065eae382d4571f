"""The run loop with a scripted model: parallel overlap, dependants waiting, merges, conflicts, budget, stuck."""

import json

from conftest import TaskScript, done, make_workspace, needs_bwrap, plan_reply, show, task, write

from m3.code.budget import Budget
from m3.code.local import LocalExecutor
from m3.code.model import ScriptedModel
from m3.code.report import build_report, render_report
from m3.code.scheduler import RunConfig, Runner

pytestmark = needs_bwrap


def start(ws, script, **config):
    model = ScriptedModel(respond=script)
    runner = Runner(ws, model, LocalExecutor(model, max_workers=4))
    run_id = runner.start("build the thing", RunConfig(**config))
    return runner, run_id, {t["id"]: t for t in runner.store.tasks(run_id)}


def test_independent_tasks_overlap_and_dependants_wait(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    script = TaskScript(
        [plan_reply(task("a"), task("b"), task("c", deps=["a", "b"]))],
        {
            "a": [write("a.txt", "A"), done("wrote a")],
            "b": [write("b.txt", "B"), done("wrote b")],
            "c": [json.dumps({"tool": "run", "args": {"command": "cat a.txt b.txt > c.txt"}}), done("joined")],
        },
        delay_s=0.5,  # each task's first model call takes 0.5 s
    )
    runner, run_id, tasks = start(ws, script)
    assert runner.store.get_run(run_id)["status"] == "done"
    assert all(t["status"] == "merged" for t in tasks.values())
    # a and b ran at the same time: each started before the other finished
    assert tasks["a"]["started_at"] < tasks["b"]["finished_at"] and tasks["b"]["started_at"] < tasks["a"]["finished_at"]
    # c started only after both were finished and merged, and saw their files in its worktree
    assert tasks["c"]["started_at"] >= max(tasks["a"]["finished_at"], tasks["b"]["finished_at"])
    assert show(ws, f"m3/{run_id}/main", "c.txt") == "AB"
    kinds = [e["kind"] for e in runner.store.events(run_id, "c")]
    assert kinds.index("started") < kinds.index("step") < kinds.index("finished") < kinds.index("merged")
    report = build_report(runner.store, run_id)
    assert {f["path"] for f in report["files_changed"]} == {"a.txt", "b.txt", "c.txt"}
    assert "files changed (3)" in render_report(report)


def test_merge_conflict_is_reported_and_work_kept(tmp_path):
    ws = make_workspace(tmp_path / "ws", {"shared.py": "x = 0\n"})
    script = TaskScript(
        [plan_reply(task("left"), task("right"), task("after", deps=["right"]))],
        {
            "left": [write("shared.py", "x = 1\n"), done()],
            "right": [write("shared.py", "x = 2\n"), done()],
            "after": [done()],
        },
        delay_s=0.3,
    )
    runner, run_id, tasks = start(ws, script)
    statuses = sorted(t["status"] for t in (tasks["left"], tasks["right"]))
    assert statuses == ["conflict", "merged"]
    loser = "left" if tasks["left"]["status"] == "conflict" else "right"
    assert "shared.py" in tasks[loser]["error"]
    # nothing lost: the conflicting work is still on its branch
    assert show(ws, f"m3/{run_id}/task/{loser}", "shared.py") == ("x = 1\n" if loser == "left" else "x = 2\n")
    report = build_report(runner.store, run_id)
    assert report["conflicts"] and report["conflicts"][0]["task"] == loser
    assert runner.store.get_run(run_id)["status"] == "failed"
    if loser == "right":
        assert tasks["after"]["status"] == "blocked"


def test_budget_stops_the_run(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    script = TaskScript(
        [plan_reply(task("a"), task("b", deps=["a"]))],
        {"a": [write("a1.txt", "1"), write("a2.txt", "2"), write("a3.txt", "3"), done()], "b": [done()]},
    )
    # 1 planning call + 2 agent calls: the third reply would be over budget and is not acted on
    runner, run_id, tasks = start(ws, script, budget=Budget(max_calls=3))
    run = runner.store.get_run(run_id)
    assert run["status"] == "stopped" and "max_calls 3" in run["reason"]
    assert run["num_calls"] == 3
    assert tasks["a"]["status"] == "failed" and "budget" in tasks["a"]["error"]
    assert tasks["b"]["status"] in ("pending", "blocked")
    assert [c for c, _ in script.calls].count("b") == 0


def test_token_budget_stops_before_planning_finishes(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    script = TaskScript(["not a plan " * 50, plan_reply(task("a"))], {"a": [done()]})
    runner, run_id, _ = start(ws, script, budget=Budget(max_tokens=50))
    run = runner.store.get_run(run_id)
    assert run["status"] == "stopped" and "tokens" in run["reason"] and run["plan"] is None


def test_stuck_agent_is_stopped(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    read = json.dumps({"tool": "read_file", "args": {"path": "README.md"}})
    script = TaskScript(
        [plan_reply(task("loop"), task("garbled"), task("ok"))],
        {"loop": [read, read, read, read, done()], "garbled": ["hmm", "let me think", "ok so", done()], "ok": [done()]},
    )
    runner, run_id, tasks = start(ws, script, stuck_repeats=3)
    assert tasks["loop"]["status"] == "failed" and "same action 3 times" in tasks["loop"]["error"]
    assert tasks["garbled"]["status"] == "failed" and "3 unusable replies" in tasks["garbled"]["error"]
    assert [c for c, _ in script.calls].count("loop") == 3
    assert tasks["loop"]["num_steps"] == 2  # the third, repeated action was never carried out
    assert tasks["ok"]["status"] == "merged"


def test_step_limit(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    steps = [write(f"f{i}.txt", str(i)) for i in range(10)]
    script = TaskScript([plan_reply(task("long"))], {"long": steps})
    runner, run_id, tasks = start(ws, script, max_steps=4)
    assert tasks["long"]["status"] == "failed" and "step limit 4" in tasks["long"]["error"]
    assert tasks["long"]["num_steps"] == 4


def test_worktree_guard_never_leaves_the_pointer_missing(tmp_path, monkeypatch):
    # regression: guard() deleted and rewrote the `.git` pointer on every commit; a `git worktree prune` for another
    # task landing in that gap deleted this worktree's metadata and failed the task (flaky test_resume)
    from pathlib import Path

    from m3.code import worktree as wtree

    ws = make_workspace(tmp_path / "ws")
    head = wtree.ensure_repo(ws)
    wt = wtree.add_worktree(ws, wtree.worktree_dir(ws, "r", "t"), wtree.task_branch("r", "t"), head)
    gitfile = wt / ".git"
    pointer = gitfile.read_text()
    removed = []
    unlink = Path.unlink
    monkeypatch.setattr(Path, "unlink", lambda self, *a, **k: (removed.append(self), unlink(self, *a, **k))[1])
    wtree.guard(wt)
    assert removed == [], "an intact pointer is left alone"
    for tamper in ("text", "symlink", "dir"):
        unlink(gitfile)
        if tamper == "text":
            gitfile.write_text("gitdir: /elsewhere\n")
        elif tamper == "symlink":
            gitfile.symlink_to(tmp_path)
        else:
            gitfile.mkdir()
        wtree.guard(wt)
        assert gitfile.is_file() and not gitfile.is_symlink() and gitfile.read_text() == pointer, tamper
        assert gitfile not in removed, f"a tampered {tamper} pointer is replaced in one step"
    (wt / "f.txt").write_text("x")
    commit, files = wtree.commit_all(wt, "f")  # git works in it again
    assert files == ["f.txt"] and commit
