"""The same plan on a local Ray instance: tasks are Ray tasks, steps and usage still land in the run store."""

import json
from pathlib import Path

import pytest
from conftest import REPO_ROOT, TaskScript, done, make_workspace, needs_bwrap, plan_reply, show, task, write

from m3.code.model import ScriptedModel
from m3.code.scheduler import RunConfig, Runner

ray = pytest.importorskip("ray")
pytestmark = needs_bwrap


def test_plan_runs_on_local_ray(tmp_path):
    from m3.code.ray_executor import RayExecutor

    # workers import m3 and this test's helpers (the scripted model is pickled by reference to them)
    path = f"{REPO_ROOT}:{Path(__file__).parent}"
    ray.init(
        num_cpus=2,
        resources={"m3_model": 2, "m3_sandbox": 2},
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    try:
        ws = make_workspace(tmp_path / "ws")
        script = TaskScript(
            [plan_reply(task("a"), task("b"), task("c", deps=["a", "b"]))],
            {
                "a": [write("a.txt", "A"), done("wrote a")],
                "b": [write("b.txt", "B"), done("wrote b")],
                "c": [json.dumps({"tool": "run", "args": {"command": "cat a.txt b.txt > c.txt"}}), done("joined")],
            },
        )
        model = ScriptedModel(respond=script)
        executor = RayExecutor(model)
        assert executor.task_resources == {"m3_model": 1, "m3_sandbox": 1}
        runner = Runner(ws, model, executor)
        run_id = runner.start("abc on ray", RunConfig(max_parallel=2))
        store = runner.store
        tasks = {t["id"]: t for t in store.tasks(run_id)}
        assert store.get_run(run_id)["status"] == "done"
        assert all(t["status"] == "merged" for t in tasks.values())
        assert show(ws, f"m3/{run_id}/main", "c.txt") == "AB"
        # steps and tokens were journaled from the Ray workers through the actor
        assert all(t["num_steps"] == 2 and t["num_tokens"] > 0 for t in tasks.values())
        assert len(store.events(run_id, "c", kind="tool_result")) == 1
        assert store.get_run(run_id)["num_calls"] == 1 + 6
    finally:
        ray.shutdown()
