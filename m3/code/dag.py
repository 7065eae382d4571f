"""A plan is a DAG of sub-tasks; `parse_plan` turns the model's JSON into one or explains why it cannot.

Validation is a hand-written schema (no jsonschema dependency): every problem found is collected so the
model can repair them all in one round. Errors name the sub-task id and the field.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class PlanError(ValueError):
    """The plan is invalid; `problems` lists each reason in words the model (and a user) can act on."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid plan:\n- " + "\n- ".join(problems))


@dataclass
class SubTask:
    id: str
    description: str
    dependencies: list[str] = field(default_factory=list)
    capabilities: list[str] = field(default_factory=list)
    effort: float = 1.0  # estimated hours, informative only

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Plan:
    tasks: list[SubTask]

    def __post_init__(self):
        self.by_id = {t.id: t for t in self.tasks}

    def to_json(self) -> str:
        return json.dumps({"tasks": [t.to_dict() for t in self.tasks]})

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls([SubTask(**t) for t in json.loads(text)["tasks"]])

    def dependants(self, task_id: str) -> list[str]:
        return [t.id for t in self.tasks if task_id in t.dependencies]

    def topo_order(self) -> list[str]:
        order = find_cycle_or_order({t.id: t.dependencies for t in self.tasks})
        assert isinstance(order, list), "validated plans are acyclic"
        return order


def extract_json(text: str):
    """The first JSON value in a model reply: a ```json fence, else the outermost {...} or [...]."""
    fence = re.search(r"```(?:json)?\s*\n(.*?)```", text, re.S)
    candidates = [fence.group(1)] if fence else []
    spans = [(text.find(o), text.rfind(c)) for o, c in (("{", "}"), ("[", "]"))]
    for start, end in sorted(s for s in spans if 0 <= s[0] < s[1]):  # the outermost value opens first
        candidates.append(text[start : end + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except json.JSONDecodeError:
            continue
    raise ValueError("no JSON object found in the reply")


def find_cycle_or_order(deps: dict[str, list[str]]) -> list[str] | tuple[str, ...]:
    """Topological order (Kahn, ties by declaration order), or one cycle as a tuple of ids."""
    indegree = {k: sum(1 for d in v if d in deps) for k, v in deps.items()}
    order, ready = [], [k for k, n in indegree.items() if n == 0]
    while ready:
        k = ready.pop(0)
        order.append(k)
        for other, v in deps.items():
            if k in v:
                indegree[other] -= 1
                if indegree[other] == 0:
                    ready.append(other)
    if len(order) == len(deps):
        return order
    # -- walk dependencies from a node left over until one repeats: that loop is a cycle --
    left = [k for k in deps if k not in order]
    path, node = [], left[0]
    while node not in path:
        path.append(node)
        node = next(d for d in deps[node] if d in left)
    return tuple(path[path.index(node) :] + [node])


def parse_plan(data, known_capabilities: set[str], max_tasks: int = 32) -> Plan:
    """Validate a decoded plan (`{"tasks": [...]}` or a bare list) and build the `Plan`."""
    if isinstance(data, dict):
        data = data.get("tasks", data.get("subtasks"))
    if not isinstance(data, list) or not data:
        raise PlanError(['the plan must be a non-empty JSON list of sub-tasks (or {"tasks": [...]})'])
    if len(data) > max_tasks:
        raise PlanError([f"the plan has {len(data)} sub-tasks; at most {max_tasks} are allowed"])
    problems, tasks, seen = [], [], set()
    for i, raw in enumerate(data):
        where = f"sub-task #{i + 1}"
        if not isinstance(raw, dict):
            problems.append(f"{where} must be an object")
            continue
        tid = str(raw.get("id", "")).strip()
        where = f"sub-task {tid!r}" if tid else where
        if not _ID.match(tid):
            problems.append(f"{where}: 'id' must match {_ID.pattern}")
        elif tid in seen:
            problems.append(f"{where}: duplicate id")
        seen.add(tid)
        desc = raw.get("description")
        if not isinstance(desc, str) or not desc.strip():
            problems.append(f"{where}: 'description' must be a non-empty string")
        deps = raw.get("dependencies", [])
        caps = raw.get("required_capabilities", raw.get("capabilities", []))
        for name, value in (("dependencies", deps), ("required_capabilities", caps)):
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                problems.append(f"{where}: '{name}' must be a list of strings")
        effort = raw.get("estimated_effort", raw.get("effort", 1.0))
        if not isinstance(effort, int | float) or isinstance(effort, bool) or effort < 0:
            problems.append(f"{where}: 'estimated_effort' must be a non-negative number (hours)")
            effort = 1.0
        if isinstance(deps, list) and isinstance(caps, list):
            tasks.append(SubTask(tid, str(desc or ""), [str(d) for d in deps], [str(c) for c in caps], float(effort)))
    ids = {t.id for t in tasks}
    for t in tasks:
        for d in t.dependencies:
            if d == t.id:
                problems.append(f"sub-task {t.id!r} depends on itself")
            elif d not in ids:
                problems.append(f"sub-task {t.id!r}: unknown dependency {d!r} (known ids: {sorted(ids)})")
        unknown = [c for c in t.capabilities if c not in known_capabilities]
        if unknown:
            problems.append(
                f"sub-task {t.id!r}: unknown capabilities {unknown} (available: {sorted(known_capabilities)})"
            )
    if not problems:
        result = find_cycle_or_order({t.id: t.dependencies for t in tasks})
        if isinstance(result, tuple):
            problems.append("dependency cycle: " + " -> ".join(result))
    if problems:
        raise PlanError(problems)
    return Plan(tasks)
