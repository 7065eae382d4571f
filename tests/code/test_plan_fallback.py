"""What a run does when the model cannot plan (a small model's usual case): after the repair budget it runs the
whole task as one sub-task, recorded as such; an endpoint failure during planning ends the run as `failed` with
the reason (no traceback, no run left in `planning`); `max_reply_tokens` caps every model call."""

import pytest
from conftest import TaskScript, done, make_workspace, needs_bwrap, plan_reply, task, write

from m3.code.agents import DEFAULT_AGENTS, Agent
from m3.code.dag import PlanError
from m3.code.local import LocalExecutor
from m3.code.model import ModelError, ScriptedModel
from m3.code.planner import make_plan, single_task_plan
from m3.code.report import build_report, render_report
from m3.code.scheduler import RunConfig, Runner

NOT_A_PLAN = "Sure! First we will think about the problem."


def test_single_task_plan_goes_to_the_most_capable_agent():
    plan = single_task_plan("add mul", list(DEFAULT_AGENTS))
    (t,) = plan.tasks
    assert (t.id, t.description, t.dependencies) == ("task", "add mul", [])
    assert t.capabilities == ["python", "backend", "cli", "refactor"]  # the developer: all six tools
    twins = [Agent("a", capabilities=("x",)), Agent("b", capabilities=("y",))]
    assert single_task_plan("t", twins).tasks[0].capabilities == ["x"]  # ties: declaration order


def test_planner_falls_back_only_when_asked():
    model = ScriptedModel([NOT_A_PLAN, NOT_A_PLAN])
    with pytest.raises(PlanError):
        make_plan(model, "x", list(DEFAULT_AGENTS), max_tries=2)
    model = ScriptedModel([NOT_A_PLAN, NOT_A_PLAN, "never asked"])
    plan = make_plan(model, "x", list(DEFAULT_AGENTS), max_tries=2, fallback=True)
    assert [t.id for t in plan.tasks] == ["task"] and len(model.calls) == 2


@needs_bwrap
def test_run_falls_back_to_one_sub_task_and_records_it(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    script = TaskScript(
        [NOT_A_PLAN, plan_reply(task("a", deps=["ghost"])), "{}"], {"task": [write("x.py", "1"), done()]}
    )
    model = ScriptedModel(respond=script)
    runner = Runner(ws, model, LocalExecutor(model))
    run_id = runner.start("write x.py", RunConfig(max_plan_tries=3))
    store = runner.store
    assert store.get_run(run_id)["status"] == "done"
    (t,) = store.tasks(run_id)
    assert (t["id"], t["agent"], t["status"], t["description"]) == ("task", "developer", "merged", "write x.py")
    attempts = store.events(run_id, kind="plan_attempt")
    assert [e["data"]["attempt"] for e in attempts] == [1, 2, 3] and all(
        e["data"]["problems"] and e["data"]["reply"] for e in attempts
    )
    (fb,) = store.events(run_id, kind="plan_fallback")
    assert fb["data"]["tries"] == 3 and fb["data"]["problems"]
    report = build_report(store, run_id)
    assert report["planning"] == {"attempts": 3, "fallback": True}
    assert "no valid plan in 3 tries; ran the whole task as one sub-task" in render_report(report)


@needs_bwrap
def test_plan_fallback_can_be_turned_off(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    model = ScriptedModel([NOT_A_PLAN] * 2)
    runner = Runner(ws, model, LocalExecutor(model))
    run_id = runner.start("x", RunConfig(max_plan_tries=2, plan_fallback=False))
    run = runner.store.get_run(run_id)
    assert run["status"] == "failed" and "no valid plan after 2 tries" in run["reason"]
    assert runner.store.tasks(run_id) == []


class DownModel:
    name = "down"

    def complete(self, messages, **kw):
        raise ModelError("http://127.0.0.1:9/v1/chat/completions failed after 4 tries: ConnectError")


@needs_bwrap
def test_endpoint_failure_while_planning_fails_the_run_with_its_reason(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    runner = Runner(ws, DownModel(), LocalExecutor(DownModel()))
    run_id = runner.start("x", RunConfig())
    run = runner.store.get_run(run_id)
    assert run["status"] == "failed" and run["reason"].startswith("planning: ") and "ConnectError" in run["reason"]


class KwRecorder(ScriptedModel):
    def complete(self, messages, **kw):
        self.kw = [*getattr(self, "kw", []), kw]
        return super().complete(messages, **kw)


@needs_bwrap
@pytest.mark.parametrize("cap, expected", [(None, [2048, 1024, 1024]), (200, [200, 200, 200])])
def test_max_reply_tokens_caps_every_call(tmp_path, cap, expected):
    ws = make_workspace(tmp_path / "ws")
    model = KwRecorder(respond=TaskScript([plan_reply(task("a"))], {"a": [write("a.py", "1"), done()]}))
    runner = Runner(ws, model, LocalExecutor(model))
    run_id = runner.start("x", RunConfig(max_reply_tokens=cap))
    assert runner.store.get_run(run_id)["status"] == "done"
    assert [kw["max_tokens"] for kw in model.kw] == expected
    assert runner.store.get_run(run_id)["config"]["max_reply_tokens"] == cap  # resume runs with the same cap
