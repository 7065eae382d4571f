"""One agent working one sub-task in its worktree: a loop of model call -> JSON action -> tool -> result.

Actions are one JSON object per reply, `{"tool": NAME, "args": {...}}` or `{"done": true, "summary": "..."}`;
text protocols work on any endpoint, small models included, where native function calling may not.
Each step is journaled before its tool runs. Stuck: the same action `stuck_repeats` times in a row, or that
many unusable replies in a row. The worker never raises: every ending is a `TaskOutcome`.
"""

from __future__ import annotations

import json
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from m3.code.budget import BudgetExceeded
from m3.code.dag import extract_json
from m3.code.model import ChatModel
from m3.code.sandbox import Limits, Sandbox
from m3.code.tools import ToolError, Tools
from m3.code.worktree import commit_all

SYSTEM = """You are {name}, a {role} in a team of coding agents. You work alone in a git worktree on ONE sub-task.
Reply with exactly one JSON object per message and nothing else:
  {{"tool": "<name>", "args": {{...}}}}   to use a tool, or
  {{"done": true, "summary": "<what you changed and how you checked it>"}}   when the sub-task is complete.
Tools:
{tools}
Paths are relative to the worktree root. Commands run without network access."""

USER = """Overall task: {goal}

Plan:
{plan}

Your sub-task ({task_id}): {description}
{deps}
Files in the worktree:
{files}"""


class TaskStuck(RuntimeError):
    pass


@dataclass
class TaskSpec:
    """Everything a worker needs, as plain data (it crosses process boundaries on Ray)."""

    run_id: str
    task: dict  # SubTask.to_dict()
    agent: dict  # Agent.to_dict()
    worktree: str
    goal: str
    plan: str  # one line per sub-task
    deps: str = ""  # summaries of finished dependencies
    max_steps: int = 20
    stuck_repeats: int = 3
    limits: Limits = field(default_factory=Limits)
    unsafe: bool = False
    model_kw: dict = field(default_factory=lambda: {"temperature": 0.2, "max_tokens": 1024})
    max_history: int = 12  # messages kept after the first two, so long tasks fit the context


@dataclass
class TaskOutcome:
    task_id: str
    status: str  # "finished" | "failed"
    summary: str = ""
    error: str = ""
    reason: str = ""  # "", "budget", "stuck", "steps", "model", "crash"
    commit: str = ""
    files: list[str] = field(default_factory=list)
    num_steps: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def run_task(spec: TaskSpec, model: ChatModel, journal) -> TaskOutcome:
    task_id = spec.task["id"]
    num_steps = 0
    try:
        sandbox = Sandbox(spec.limits, unsafe=spec.unsafe)
        wt = Path(spec.worktree)
        tools = Tools(wt, sandbox, tuple(spec.agent["tools"]))
        messages = [
            {
                "role": "system",
                "content": SYSTEM.format(name=spec.agent["name"], role=spec.agent["role"], tools=tools.describe()),
            },
            {
                "role": "user",
                "content": USER.format(
                    goal=spec.goal,
                    plan=spec.plan,
                    task_id=task_id,
                    description=spec.task["description"],
                    deps=f"\nResults of the sub-tasks you depend on:\n{spec.deps}\n" if spec.deps else "",
                    files=tools.list_files("."),
                ),
            },
        ]
        last_key, repeats, num_bad = None, 0, 0
        while num_steps < spec.max_steps:
            journal.check()
            reply = model.complete(messages[:2] + messages[2:][-spec.max_history :], **spec.model_kw)
            journal.charge(task_id, reply.num_tokens)
            num_steps += 1
            messages.append({"role": "assistant", "content": reply.text})
            try:
                action = extract_json(reply.text)
                if not isinstance(action, dict) or not ("tool" in action or action.get("done")):
                    raise ValueError('expected {"tool": ..., "args": {...}} or {"done": true, "summary": ...}')
            except ValueError as e:
                num_bad += 1
                journal.step(task_id, "step", {"n": num_steps, "invalid": reply.text[:500], "error": str(e)})
                if num_bad >= spec.stuck_repeats:
                    raise TaskStuck(f"{num_bad} unusable replies in a row (last: {e})") from None
                messages.append({"role": "user", "content": f"Not a valid action: {e}. Reply with one JSON object."})
                continue
            num_bad = 0
            key = json.dumps(action, sort_keys=True)
            repeats = repeats + 1 if key == last_key else 1
            last_key = key
            if repeats >= spec.stuck_repeats:
                raise TaskStuck(f"the same action {repeats} times in a row: {key[:300]}")
            journal.step(task_id, "step", {"n": num_steps, "action": action})
            if action.get("done"):
                summary = str(action.get("summary", ""))[:2000]
                commit, files = commit_all(wt, f"{task_id}: {spec.task['description'][:60]}\n\n{summary}")
                return TaskOutcome(task_id, "finished", summary, commit=commit, files=files, num_steps=num_steps)
            try:
                result = tools.call(str(action["tool"]), action.get("args", {}))
            except ToolError as e:
                result = f"error: {e}"
            journal.step(task_id, "tool_result", {"n": num_steps, "result": result[:2000]})
            messages.append({"role": "user", "content": f"Result of {action['tool']}:\n{result}"})
        return TaskOutcome(
            task_id, "failed", error=f"step limit {spec.max_steps} reached", reason="steps", num_steps=num_steps
        )
    except BudgetExceeded as e:
        return TaskOutcome(task_id, "failed", error=str(e), reason="budget", num_steps=num_steps)
    except TaskStuck as e:
        return TaskOutcome(task_id, "failed", error=f"stuck: {e}", reason="stuck", num_steps=num_steps)
    except Exception as e:  # noqa: BLE001 - a worker must report, not die: the run goes on
        from m3.code.model import ModelError

        reason = "model" if isinstance(e, ModelError) else "crash"
        err = f"{type(e).__name__}: {e}" + ("" if reason == "model" else "\n" + traceback.format_exc(limit=5))
        return TaskOutcome(task_id, "failed", error=err, reason=reason, num_steps=num_steps)
