"""Ask the model to decompose a task into a JSON plan; validate it; on errors, send them back for repair.

At most `max_tries` model calls; each attempt and its problems are recorded in the run store, and each call
is charged to the run budget. The last problems are raised as a `PlanError` if no attempt validates, or,
with `fallback=True` (what `m3 code run` uses), the whole task becomes a one-sub-task plan for the most capable
agent, recorded as a `plan_fallback` event: a weak model's unusable plans should not stop the work itself.
"""

from __future__ import annotations

from m3.code.agents import Agent, capabilities_of
from m3.code.dag import Plan, PlanError, SubTask, extract_json, parse_plan
from m3.code.model import ChatModel

PROMPT = """Decompose the task below into sub-tasks for a team of coding agents working in one git repository.
Each sub-task is done by one agent in its own copy of the repository; independent sub-tasks run in parallel,
and a sub-task starts only after its dependencies are merged.

Agents and their capabilities:
{agents}

Reply with JSON only, in this form:
{{"tasks": [{{"id": "short-id", "description": "what to do, concretely (files, functions, tests)",
  "dependencies": ["ids of sub-tasks that must finish first"],
  "required_capabilities": ["capabilities from the list above"],
  "estimated_effort": 1.0}}]}}
Use at most {max_tasks} sub-tasks; ids are letters, digits, '-', '_' or '.'; no dependency cycles.

Task: {task}

Files in the repository:
{files}"""

REPAIR = """That plan is invalid:
- {problems}
Reply with the corrected plan, JSON only, in the same form."""


def make_plan(
    model: ChatModel,
    task: str,
    agents: list[Agent],
    files: str = "",
    journal=None,
    max_tries: int = 3,
    max_tasks: int = 16,
    model_kw: dict | None = None,
    fallback: bool = False,
) -> Plan:
    known = capabilities_of(agents)
    agent_lines = "\n".join(f"- {a.name} ({a.role}): {', '.join(a.capabilities)}" for a in agents)
    messages = [
        {
            "role": "user",
            "content": PROMPT.format(agents=agent_lines, task=task, files=files or "(empty)", max_tasks=max_tasks),
        },
    ]
    problems: list[str] = []
    for attempt in range(1, max_tries + 1):
        if journal is not None:
            journal.check()
        reply = model.complete(messages, **(model_kw or {"temperature": 0.2, "max_tokens": 2048}))
        if journal is not None:
            journal.charge(None, reply.num_tokens)
        try:
            plan = parse_plan(extract_json(reply.text), known, max_tasks=max_tasks)
        except PlanError as e:
            problems = e.problems
        except ValueError as e:
            problems = [f"the reply is not valid JSON ({e})"]
        else:
            if journal is not None:
                journal.store.event(journal.run_id, None, "plan_attempt", {"attempt": attempt, "ok": True})
            return plan
        if journal is not None:
            journal.store.event(
                journal.run_id,
                None,
                "plan_attempt",
                {"attempt": attempt, "problems": problems, "reply": reply.text[:500]},
            )
        messages += [
            {"role": "assistant", "content": reply.text},
            {"role": "user", "content": REPAIR.format(problems="\n- ".join(problems))},
        ]
    if not fallback:
        raise PlanError([f"no valid plan after {max_tries} tries; last problems:", *problems])
    plan = single_task_plan(task, agents)
    if journal is not None:
        journal.store.event(
            journal.run_id, None, "plan_fallback", {"tries": max_tries, "problems": problems, "plan": plan.to_json()}
        )
    return plan


def single_task_plan(task: str, agents: list[Agent]) -> Plan:
    """The whole task as one sub-task, requiring the capabilities of the agent with the most tools, then the
    most capabilities (declaration order on ties), so routing gives it to that agent."""
    best = max(agents, key=lambda a: (len(a.tools), len(a.capabilities)))
    return Plan([SubTask("task", task, [], list(best.capabilities))])
