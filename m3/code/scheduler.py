"""The run loop: plan, then dispatch ready sub-tasks to agents in parallel, merge results, checkpoint all.

A sub-task is ready when every dependency is merged; it is marked `started` (with its agent) in the store
before its worker is submitted, and `merging` before its branch is merged. Resume reads those marks: started
tasks are redone from a fresh worktree, finished or merging ones are merged without rerunning the agent,
merged ones are left alone. Dependants of a failed or conflicted task are `blocked`.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from m3.code import worktree as wtree
from m3.code.agents import DEFAULT_AGENTS, Agent, AgentPool
from m3.code.budget import Budget, BudgetExceeded, Journal
from m3.code.dag import SubTask
from m3.code.model import ChatModel, ModelError
from m3.code.planner import make_plan
from m3.code.router import route
from m3.code.sandbox import Limits, Sandbox
from m3.code.store import DONE_STATES, Store
from m3.code.tools import Tools
from m3.code.worker import TaskSpec


@dataclass
class RunConfig:
    """The knobs of one run; stored with it so `resume` runs with the same ones."""

    max_parallel: int = 4  # sub-tasks in flight at once
    max_steps: int = 20  # agent steps per sub-task
    stuck_repeats: int = 3  # identical actions (or unusable replies) in a row that count as stuck
    max_plan_tries: int = 3
    max_tasks: int = 16
    plan_fallback: bool = True  # no valid plan after max_plan_tries: run the whole task as one sub-task
    max_reply_tokens: int | None = None  # cap on each model reply (planner default 2048, agents 1024)
    budget: Budget = field(default_factory=Budget)
    limits: Limits = field(default_factory=Limits)
    unsafe: bool = False  # run without bubblewrap
    test_cmd: str | None = None  # run on the merged result for the report, e.g. "python -m pytest -q"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        d = dict(d)
        d["budget"], d["limits"] = Budget(**d["budget"]), Limits(**d["limits"])
        return cls(**d)


def default_store_path(workspace: Path) -> Path:
    return workspace / wtree.STATE_DIR / "runs.db"


class Runner:
    def __init__(
        self,
        workspace: str | Path,
        model: ChatModel,
        executor,
        agents: list[Agent] | None = None,
        store: Store | None = None,
        on_update: Callable[[str], None] | None = None,
    ):
        self.workspace = Path(workspace).resolve()
        self.model = model
        self.executor = executor
        self.agents = list(agents or DEFAULT_AGENTS)
        self.store = store or Store(default_store_path(self.workspace))
        self.on_update = on_update or (lambda run_id: None)

    def start(self, task: str, config: RunConfig | None = None, run_id: str | None = None) -> str:
        config = config or RunConfig()
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
        sandbox = Sandbox(config.limits, unsafe=config.unsafe)  # refuses here, before any work, without bwrap
        base = wtree.ensure_repo(self.workspace)
        cfg = {**config.to_dict(), "agents": [a.to_dict() for a in self.agents]}
        self.store.create_run(run_id, task, str(self.workspace), cfg)
        self.store.update_run(run_id, isolation=sandbox.isolation, base_commit=base, branch=wtree.run_branch(run_id))
        self.store.event(run_id, None, "isolation", {"level": sandbox.isolation})
        self._execute(run_id, config)
        return run_id

    def resume(self, run_id: str, retry_failed: bool = False, budget: Budget | None = None) -> str:
        run = self.store.get_run(run_id)
        config = RunConfig.from_dict({k: v for k, v in run["config"].items() if k != "agents"})
        if budget is not None:
            config.budget = budget
        sandbox = Sandbox(config.limits, unsafe=config.unsafe)
        self.store.event(run_id, None, "resumed", {"isolation": sandbox.isolation, "retry_failed": retry_failed})
        self.store.update_run(run_id, isolation=sandbox.isolation, reason=None)
        for t in self.store.tasks(run_id):
            if t["status"] == "started" or (retry_failed and t["status"] in ("failed", "blocked")):
                self.store.set_task(run_id, t["id"], "pending", {"why": f"requeued on resume from {t['status']}"})
        self._execute(run_id, config)
        return run_id

    # -- the loop --
    def _execute(self, run_id: str, config: RunConfig) -> None:
        run = self.store.get_run(run_id)
        journal = Journal(self.store, run_id, config.budget)
        self.store.update_run(run_id, pid=os.getpid())
        integration = wtree.ensure_run_worktree(self.workspace, run_id, run["base_commit"])
        self.executor.attach(journal)
        try:
            if run["plan"] is None:
                try:
                    files = Tools(integration, None).list_files(".")
                    plan = make_plan(
                        self.model,
                        run["task"],
                        self.agents,
                        files,
                        journal,
                        config.max_plan_tries,
                        config.max_tasks,
                        {"temperature": 0.2, "max_tokens": min(2048, config.max_reply_tokens or 2048)},
                        fallback=config.plan_fallback,
                    )
                except (BudgetExceeded, ValueError, ModelError) as e:
                    status = "stopped" if isinstance(e, BudgetExceeded) else "failed"
                    self.store.update_run(run_id, status=status, reason=f"planning: {e}")
                    return
                self.store.set_plan(run_id, plan.to_json())
            self.store.update_run(run_id, status="running")
            stop_reason = self._loop(run_id, config, journal, integration)
            self._finish(run_id, config, integration, stop_reason)
        finally:
            journal.save_elapsed()
            self.executor.shutdown()
            self.on_update(run_id)

    def _loop(self, run_id: str, config: RunConfig, journal: Journal, integration: Path) -> str | None:
        run = self.store.get_run(run_id)
        plan_lines = "\n".join(f"- {t['id']}: {t['description']}" for t in self.store.tasks(run_id))
        pool = AgentPool(self.agents)
        running: dict[object, tuple[str, str]] = {}  # handle -> (task id, agent name)
        stop_reason = None
        for t in self.store.tasks(run_id):  # finished before a crash: merge without rerunning the agent
            if t["status"] in ("finished", "merging"):
                self._merge(run_id, t, integration)
        while True:
            tasks = {t["id"]: t for t in self.store.tasks(run_id)}
            for t in tasks.values():
                bad = [d for d in t["dependencies"] if tasks[d]["status"] in ("failed", "conflict", "blocked")]
                if t["status"] == "pending" and bad:
                    self.store.set_task(run_id, t["id"], "blocked", {"because": bad}, error=f"blocked by {bad}")
            if stop_reason is None:
                try:
                    journal.check()
                except BudgetExceeded as e:
                    stop_reason = str(e)
                    self.store.event(run_id, None, "budget_stop", {"reason": stop_reason})
            if stop_reason is None:
                for t in tasks.values():
                    if len(running) >= config.max_parallel:
                        break
                    ready = t["status"] == "pending" and all(tasks[d]["status"] == "merged" for d in t["dependencies"])
                    agent = route(SubTask(t["id"], t["description"], [], t["capabilities"]), pool) if ready else None
                    if agent is None:
                        continue
                    pool.acquire(agent)
                    spec = self._spec(run, config, t, agent, tasks, plan_lines, integration)
                    self.store.set_task(
                        run_id,
                        t["id"],
                        "started",
                        {"agent": agent.name},
                        agent=agent.name,
                        attempts=t["attempts"] + 1,
                        started_at=time.time(),
                    )
                    t["status"] = "started"
                    running[self.executor.submit(spec)] = (t["id"], agent.name)
            self.on_update(run_id)
            if not running:
                tasks = {t["id"]: t for t in self.store.tasks(run_id)}
                stranded = [
                    t["id"]
                    for t in tasks.values()
                    if t["status"] == "pending" and all(tasks[d]["status"] == "merged" for d in t["dependencies"])
                ]
                if stop_reason is None and stranded:
                    for tid in stranded:  # nothing runs, yet these cannot start: no agent has their capabilities
                        self.store.set_task(run_id, tid, "failed", {"why": "no agent"}, error="no agent can take it")
                    continue
                return stop_reason
            for handle, outcome in self.executor.wait(list(running), timeout_s=0.5):
                task_id, agent_name = running.pop(handle)
                pool.release(agent_name)
                self._record(run_id, task_id, outcome, integration)
                if outcome.reason == "budget" and stop_reason is None:
                    stop_reason = outcome.error
                    self.store.event(run_id, None, "budget_stop", {"reason": stop_reason})

    def _spec(self, run, config, t, agent, tasks, plan_lines, integration) -> TaskSpec:
        wt = wtree.worktree_dir(self.workspace, run["id"], t["id"])
        head = wtree.git(integration, "rev-parse", "HEAD")
        wtree.add_worktree(self.workspace, wt, wtree.task_branch(run["id"], t["id"]), head)
        deps = "\n".join(f"- {d}: {tasks[d]['summary'] or '(no summary)'}" for d in t["dependencies"])
        return TaskSpec(
            run_id=run["id"],
            task={"id": t["id"], "description": t["description"], "dependencies": t["dependencies"]},
            agent={**agent.to_dict(), "model": agent.model},
            worktree=str(wt),
            goal=run["task"],
            plan=plan_lines,
            deps=deps,
            max_steps=config.max_steps,
            stuck_repeats=config.stuck_repeats,
            limits=config.limits,
            unsafe=config.unsafe,
            model_kw={"temperature": 0.2, "max_tokens": min(1024, config.max_reply_tokens or 1024)},
        )

    def _record(self, run_id: str, task_id: str, outcome, integration: Path) -> None:
        if outcome.status != "finished":
            self.store.set_task(
                run_id,
                task_id,
                "failed",
                {"reason": outcome.reason, "error": outcome.error[:2000]},
                error=outcome.error[:4000],
                finished_at=time.time(),
            )
            return
        self.store.set_task(
            run_id,
            task_id,
            "finished",
            {"commit": outcome.commit, "files": outcome.files},
            commit_sha=outcome.commit,
            summary=outcome.summary,
            files=outcome.files,
            finished_at=time.time(),
        )
        self._merge(run_id, next(t for t in self.store.tasks(run_id) if t["id"] == task_id), integration)

    def _merge(self, run_id: str, t: dict, integration: Path) -> None:
        if t["status"] == "merging" and wtree.is_merged(integration, t["commit_sha"]):
            self.store.set_task(run_id, t["id"], "merged", {"commit": t["commit_sha"], "note": "merged before crash"})
            return
        self.store.set_task(run_id, t["id"], "merging", {"commit": t["commit_sha"]})
        branch = wtree.task_branch(run_id, t["id"])
        result = wtree.merge(integration, branch, f"m3 code: merge {t['id']}")
        if result.ok:
            self.store.set_task(run_id, t["id"], "merged", {"head": result.commit})
        else:
            self.store.set_task(
                run_id,
                t["id"],
                "conflict",
                {"files": result.conflicts, "branch": branch},
                error=f"merge conflict in {result.conflicts}; work kept on branch {branch}",
            )

    def _finish(self, run_id: str, config: RunConfig, integration: Path, stop_reason: str | None) -> None:
        tasks = self.store.tasks(run_id)
        if config.test_cmd:
            r = Sandbox(config.limits, unsafe=config.unsafe).run(["sh", "-c", config.test_cmd], integration)
            self.store.event(
                run_id,
                None,
                "tests",
                {
                    "cmd": config.test_cmd,
                    "returncode": r.returncode,
                    "stdout": r.stdout[-4000:],
                    "stderr": r.stderr[-2000:],
                },
            )
            wtree.git(integration, "checkout", "--", ".", check=False)
            wtree.git(integration, "clean", "-fdq", check=False)
        if stop_reason:
            status, reason = "stopped", stop_reason
        elif all(t["status"] == "merged" for t in tasks):
            status, reason = "done", None
        else:
            bad = [f"{t['id']}={t['status']}" for t in tasks if t["status"] != "merged"]
            status, reason = "failed", "not merged: " + ", ".join(bad)
        assert all(t["status"] in DONE_STATES or stop_reason for t in tasks), "loop ended with work left"
        self.store.update_run(run_id, status=status, reason=reason)
        self.store.event(run_id, None, "run_" + status, {"reason": reason})
