"""MiniMax Code: an agent cluster that plans coding work as a DAG, runs it in parallel git worktrees with
sandboxed tools, checkpoints every transition in SQLite, and reports. Reaches models only over HTTP
(OpenAI wire format, `m3.code.model`); never imports torch or the engine. See docs/code.md.
"""

from m3.code.agents import Agent, load_agents
from m3.code.budget import Budget
from m3.code.model import EndpointModel, ModelSpec, Reply, ScriptedModel
from m3.code.sandbox import Limits, Sandbox
from m3.code.scheduler import RunConfig, Runner

__all__ = [
    "Agent",
    "Budget",
    "EndpointModel",
    "Limits",
    "ModelSpec",
    "Reply",
    "RunConfig",
    "Runner",
    "Sandbox",
    "ScriptedModel",
    "load_agents",
]
