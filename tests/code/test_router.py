"""Capability routing: deterministic, best match among available agents; agents declared in TOML/YAML."""

import pytest

from m3.code.agents import Agent, AgentPool, load_agents
from m3.code.dag import SubTask
from m3.code.router import best_possible, route

AGENTS = [
    Agent("generalist", capabilities=("python", "react", "sql", "docs")),
    Agent("backend", capabilities=("python", "sql")),
    Agent("frontend", capabilities=("react", "css")),
    Agent("qa", capabilities=("pytest", "python")),
]


def t(*caps):
    return SubTask("t", "x", [], list(caps))


def test_routes_to_the_best_matching_agent():
    pool = AgentPool(AGENTS)
    assert route(t("python", "sql"), pool).name == "backend"  # 2 matches, fewest extras
    assert route(t("react"), pool).name == "frontend"
    assert route(t("pytest"), pool).name == "qa"
    assert route(t("python", "react", "docs"), pool).name == "generalist"
    assert route(t(), pool).name == "backend"  # no requirement: the leanest agent, first declared on ties


def test_busy_agent_is_skipped_and_unmatched_task_waits():
    pool = AgentPool(AGENTS)
    pool.acquire(AGENTS[1])  # backend busy (max_concurrent=1)
    assert route(t("python", "sql"), pool).name == "generalist"
    pool.acquire(AGENTS[2])
    assert route(t("css"), pool) is None  # only frontend has css, and it is busy
    assert best_possible(t("css"), AGENTS).name == "frontend"
    pool.release("frontend")
    assert route(t("css"), pool).name == "frontend"


def test_routing_is_deterministic():
    picks = {route(t("python"), AgentPool(list(AGENTS))).name for _ in range(20)}
    assert picks == {"backend"}


def test_agents_from_toml_and_yaml(tmp_path):
    (tmp_path / "a.toml").write_text(
        '[[agents]]\nname = "be"\nrole = "Backend"\ncapabilities = ["python"]\nmax_concurrent = 3\n'
        '[[agents]]\nname = "fe"\ncapabilities = ["react"]\ntools = ["read_file", "write_file"]\n'
    )
    agents = load_agents(tmp_path / "a.toml")
    assert [(a.name, a.max_concurrent) for a in agents] == [("be", 3), ("fe", 1)]
    assert agents[1].tools == ("read_file", "write_file")
    (tmp_path / "a.yaml").write_text("agents:\n  - name: qa\n    capabilities: [pytest]\n")
    assert load_agents(tmp_path / "a.yaml")[0].capabilities == ("pytest",)
    (tmp_path / "bad.yaml").write_text("agents:\n  - name: qa\n    tools: [rm_rf]\n")
    with pytest.raises(ValueError, match="unknown tools"):
        load_agents(tmp_path / "bad.yaml")
