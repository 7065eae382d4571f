"""Plan validation, cycle rejection and model-driven repair (bounded)."""

import json

import pytest
from conftest import plan_reply, task

from m3.code.agents import DEFAULT_AGENTS, capabilities_of
from m3.code.dag import PlanError, extract_json, find_cycle_or_order, parse_plan
from m3.code.model import ScriptedModel
from m3.code.planner import make_plan

CAPS = capabilities_of(DEFAULT_AGENTS)


def test_valid_plan_parses_in_topological_order():
    plan = parse_plan({"tasks": [task("c", deps=["a", "b"]), task("a"), task("b", deps=["a"])]}, CAPS)
    assert plan.topo_order() == ["a", "b", "c"]
    assert plan.dependants("a") == ["c", "b"]


@pytest.mark.parametrize(
    "tasks, needle",
    [
        ([task("a", deps=["zzz"])], "unknown dependency 'zzz'"),
        ([task("a", caps=["cobol"])], "unknown capabilities ['cobol']"),
        ([task("a"), task("a")], "duplicate id"),
        ([task("a", deps=["a"])], "depends on itself"),
        ([{"id": "a", "dependencies": []}], "'description' must be a non-empty string"),
        ([{"id": "bad id!", "description": "x"}], "'id' must match"),
        ([], "non-empty"),
    ],
)
def test_invalid_plans_are_rejected_with_a_clear_reason(tasks, needle):
    with pytest.raises(PlanError) as e:
        parse_plan({"tasks": tasks}, CAPS)
    assert any(needle in p for p in e.value.problems), e.value.problems


def test_cycle_is_rejected_and_named():
    tasks = [task("a", deps=["c"]), task("b", deps=["a"]), task("c", deps=["b"]), task("d")]
    with pytest.raises(PlanError) as e:
        parse_plan(tasks, CAPS)
    (problem,) = e.value.problems
    assert problem.startswith("dependency cycle: ")
    cycle = problem.removeprefix("dependency cycle: ").split(" -> ")
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert find_cycle_or_order({"x": [], "y": ["x"]}) == ["x", "y"]


def test_extract_json_from_fenced_and_bare_replies():
    assert extract_json('sure!\n```json\n{"a": 1}\n```\nbye') == {"a": 1}
    assert extract_json('plan: [{"id": "x"}] done') == [{"id": "x"}]
    with pytest.raises(ValueError):
        extract_json("no json here")


def test_planner_repairs_an_invalid_plan():
    model = ScriptedModel(
        [
            "I think we should write code.",  # not JSON
            plan_reply(task("a"), task("b", deps=["a", "ghost"])),  # unknown dependency
            plan_reply(task("a"), task("b", deps=["a"])),
        ]
    )
    plan = make_plan(model, "build it", list(DEFAULT_AGENTS), max_tries=3)
    assert [t.id for t in plan.tasks] == ["a", "b"]
    assert len(model.calls) == 3
    assert "not valid JSON" in model.calls[1][-1]["content"]
    assert "unknown dependency 'ghost'" in model.calls[2][-1]["content"]


def test_planner_gives_up_after_max_tries():
    bad = plan_reply(task("a", deps=["b"]), task("b", deps=["a"]))
    model = ScriptedModel([bad, bad, bad, json.dumps({"tasks": [task("a")]})])
    with pytest.raises(PlanError, match="no valid plan after 2 tries"):
        make_plan(model, "x", list(DEFAULT_AGENTS), max_tries=2)
    assert len(model.calls) == 2
