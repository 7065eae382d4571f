"""Capability routing: a ready sub-task goes to the best-matching available agent, deterministically.

Score, highest first: number of required capabilities the agent has, then fewer capabilities it lacks
beyond those (a specialist beats a generalist), then lower current load, then declaration order.
An agent that has none of the required capabilities is only chosen for a task that requires none.
"""

from __future__ import annotations

from m3.code.agents import Agent, AgentPool
from m3.code.dag import SubTask


def score(agent: Agent, task: SubTask) -> tuple[int, int] | None:
    required = set(task.capabilities)
    have = set(agent.capabilities)
    matched = len(required & have)
    if required and matched == 0:
        return None
    return matched, -len(have - required)


def route(task: SubTask, pool: AgentPool) -> Agent | None:
    """The agent to run `task` now, or None when every suitable agent is busy."""
    best, best_key = None, None
    for order, agent in enumerate(pool.agents):
        s = score(agent, task)
        if s is None or not pool.is_available(agent):
            continue
        key = (s[0], s[1], -pool.load.get(agent.name, 0), -order)
        if best_key is None or key > best_key:
            best, best_key = agent, key
    return best


def best_possible(task: SubTask, agents: list[Agent]) -> Agent | None:
    """The agent `route` would pick if every agent were idle; None means no agent can ever take it."""
    return route(task, AgentPool(agents))
