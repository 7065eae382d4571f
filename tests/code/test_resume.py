"""Resume after SIGKILL: a real runner process is killed mid-run; resume reruns nothing finished, loses nothing."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import REPO_ROOT, TaskScript, done, make_workspace, needs_bwrap, plan_reply, show, task, write

from m3.code.local import LocalExecutor
from m3.code.model import ScriptedModel
from m3.code.scheduler import Runner, default_store_path
from m3.code.store import Store

pytestmark = needs_bwrap

DRIVER = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = [{repo!r}, {tests!r}]
    from conftest import TaskScript, plan_reply, task, write, done
    from m3.code.local import LocalExecutor
    from m3.code.model import ScriptedModel
    from m3.code.scheduler import RunConfig, Runner

    script = TaskScript(
        [plan_reply(task("a"), task("b"), task("slow"), task("c", deps=["a", "b"]))],
        {{"a": [write("a.txt", "A"), done("a done")], "b": [write("b.txt", "B"), done("b done")],
          "c": [write("c.txt", "C"), done("c done")], "slow": [write("slow.txt", "S"), done()]}},
    )
    def respond(messages):
        if "Your sub-task (slow)" in messages[1]["content"] if len(messages) > 1 else False:
            time.sleep(600)  # hangs here until the test kills this process
        return script(messages)
    model = ScriptedModel(respond=respond)
    Runner({ws!r}, model, LocalExecutor(model, 4)).start("four files", RunConfig(), run_id="r1")
    """
)


def wait_for(pred, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_resume_after_sigkill_reruns_nothing_finished(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    code = DRIVER.format(repo=str(REPO_ROOT), tests=str(Path(__file__).parent), ws=str(ws))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    db = default_store_path(ws)

    def mid_run():
        if proc.poll() is not None:
            raise AssertionError(f"runner exited early: {proc.stdout.read().decode()}")
        if not db.exists():
            return False
        try:
            tasks = {t["id"]: t["status"] for t in Store(db).tasks("r1")}
        except Exception:
            return False
        return tasks.get("slow") == "started" and all(tasks.get(k) == "merged" for k in "abc")

    try:
        wait_for(mid_run, timeout_s=180.0)  # under a second when idle; generous for a loaded 2-core CI machine
    except AssertionError as e:
        os.kill(proc.pid, signal.SIGKILL)
        tasks = {t["id"]: (t["status"], t["error"]) for t in Store(db).tasks("r1")} if db.exists() else None
        out = proc.communicate()[0].decode()[-3000:]
        msg = f"runner never reached a, b, c merged with slow started: tasks {tasks}; output: {out}"
        raise AssertionError(msg) from e
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = Store(db)
    assert store.get_run("r1")["status"] == "running"  # as the kill left it
    script = TaskScript([], {"slow": [write("slow.txt", "S2"), done("slow done")]})
    model = ScriptedModel(respond=script)
    Runner(ws, model, LocalExecutor(model, 4), store=store).resume("r1")

    run = store.get_run("r1")
    tasks = {t["id"]: t for t in store.tasks("r1")}
    assert run["status"] == "done", run["reason"]
    assert {c for c, _ in script.calls} == {"slow"}  # no replanning, no finished task rerun
    assert all(t["status"] == "merged" for t in tasks.values())
    assert tasks["slow"]["attempts"] == 2 and tasks["a"]["attempts"] == 1
    assert tasks["a"]["summary"] == "a done"  # results recorded before the kill are kept
    for name, content in [("a.txt", "A"), ("b.txt", "B"), ("c.txt", "C"), ("slow.txt", "S2")]:
        assert show(ws, "m3/r1/main", name) == content
    started = [e["task_id"] for e in store.events("r1", kind="started")]
    assert sorted(started) == ["a", "b", "c", "slow", "slow"]
    assert [e["kind"] for e in store.events("r1") if e["kind"] == "resumed"] == ["resumed"]


def test_resume_merges_a_task_that_finished_before_the_crash(tmp_path):
    """A crash between `finished` and `merged`: resume merges the recorded commit without rerunning the agent."""
    from m3.code import worktree as wtree
    from m3.code.scheduler import RunConfig

    ws = make_workspace(tmp_path / "ws")
    script = TaskScript([plan_reply(task("a"))], {"a": [done()]})
    model = ScriptedModel(respond=script)
    runner = Runner(ws, model, LocalExecutor(model, 2))
    run_id = runner.start("x", RunConfig(), run_id="r2")
    # forge the crash: a second task whose worker committed, recorded `finished`, then the process died
    store = runner.store
    wt = wtree.add_worktree(
        ws,
        wtree.worktree_dir(ws, run_id, "late"),
        wtree.task_branch(run_id, "late"),
        wtree.git(wtree.worktree_dir(ws, run_id, "_main"), "rev-parse", "HEAD"),
    )
    (wt / "late.txt").write_text("L")
    commit, _ = wtree.commit_all(wt, "late")
    with store._lock:
        store._db.execute(
            "INSERT INTO tasks (run_id, id, ord, description, dependencies, capabilities, effort, status, commit_sha)"
            " VALUES ('r2', 'late', 1, 'late', '[]', '[]', 1, 'finished', ?)",
            (commit,),
        )
    store.update_run(run_id, status="running")
    replay = TaskScript([], {})
    model2 = ScriptedModel(respond=replay)
    Runner(ws, model2, LocalExecutor(model2, 2), store=store).resume(run_id)
    assert replay.calls == []
    assert {t["id"]: t["status"] for t in store.tasks(run_id)} == {"a": "merged", "late": "merged"}
    assert show(ws, f"m3/{run_id}/main", "late.txt") == "L"
