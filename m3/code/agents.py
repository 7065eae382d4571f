"""Agents are declared, not improvised: name, role, capabilities, tools, model and a concurrency limit.

Declare them in Python (`Agent(...)`) or in a TOML/YAML file (`load_agents`) of the form
`[[agents]] name = "backend" ...` / `agents: [{name: backend, ...}]`. Routing (router.py) only ever reads
these fields, never free text.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

TOOL_NAMES = ("read_file", "list_files", "search", "write_file", "patch_file", "run")


@dataclass(frozen=True)
class Agent:
    name: str
    role: str = "Software Engineer"
    capabilities: tuple[str, ...] = ()
    tools: tuple[str, ...] = TOOL_NAMES
    model: str | None = None  # None: the run's default model name
    max_concurrent: int = 1  # tasks this agent may hold at once

    def __post_init__(self):
        object.__setattr__(self, "capabilities", tuple(self.capabilities))
        object.__setattr__(self, "tools", tuple(self.tools))
        if not self.name:
            raise ValueError("agent 'name' must be non-empty")
        if self.max_concurrent < 1:
            raise ValueError(f"agent {self.name!r}: 'max_concurrent' must be >= 1, got {self.max_concurrent}")
        unknown = [t for t in self.tools if t not in TOOL_NAMES]
        if unknown:
            raise ValueError(f"agent {self.name!r}: unknown tools {unknown} (known: {list(TOOL_NAMES)})")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "role": self.role,
            "capabilities": list(self.capabilities),
            "tools": list(self.tools),
            "model": self.model,
            "max_concurrent": self.max_concurrent,
        }


DEFAULT_AGENTS = (
    Agent("architect", "System Architect", ("design", "docs"), ("read_file", "list_files", "search", "write_file")),
    Agent("developer", "Software Engineer", ("python", "backend", "cli", "refactor"), max_concurrent=2),
    Agent("tester", "QA Engineer", ("testing", "pytest"), max_concurrent=2),
)


def capabilities_of(agents: list[Agent] | tuple[Agent, ...]) -> set[str]:
    return {c for a in agents for c in a.capabilities}


def agents_from_dicts(items: list[dict]) -> list[Agent]:
    agents = []
    for i, raw in enumerate(items):
        if not isinstance(raw, dict):
            raise ValueError(f"agent #{i + 1} must be a table/mapping")
        allowed = {"name", "role", "capabilities", "tools", "model", "max_concurrent"}
        extra = set(raw) - allowed
        if extra:
            raise ValueError(f"agent #{i + 1}: unknown fields {sorted(extra)} (allowed: {sorted(allowed)})")
        agents.append(Agent(**raw))
    names = [a.name for a in agents]
    if len(set(names)) != len(names):
        raise ValueError(f"agent names must be unique, got {names}")
    return agents


def load_agents(path: str | Path) -> list[Agent]:
    """Agents from a `.toml` or `.yaml`/`.yml` file with a top-level `agents` list."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".toml":
        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(text)
    else:
        raise ValueError(f"{path}: agents file must end in .toml, .yaml or .yml")
    if not isinstance(data, dict) or not isinstance(data.get("agents"), list):
        raise ValueError(f"{path}: expected a top-level 'agents' list")
    return agents_from_dicts(data["agents"])


@dataclass
class AgentPool:
    """Which agents hold how many tasks right now; used by the scheduler on one thread."""

    agents: list[Agent]
    load: dict[str, int] = field(default_factory=dict)

    def is_available(self, agent: Agent) -> bool:
        return self.load.get(agent.name, 0) < agent.max_concurrent

    def acquire(self, agent: Agent) -> None:
        assert self.is_available(agent), agent.name
        self.load[agent.name] = self.load.get(agent.name, 0) + 1

    def release(self, name: str) -> None:
        self.load[name] -= 1
