"""Scale-out executor: each sub-task is a Ray task; the run store stays with the driver.

Workers book usage and steps through a `JournalActor` pinned to the driver's node (it owns a connection to
the same SQLite file), so checkpoints and budgets work as with the local executor. Each task asks for
`num_cpus=1` plus one `m3_model` and one `m3_sandbox` slot when the cluster declares those resources
(`ray start --resources '{"m3_model": 8, "m3_sandbox": 4}'`). Worktrees live in the workspace, so workers
must see it at the same path (one machine, or a shared filesystem). Ray is imported only when used.
"""

from __future__ import annotations

from m3.code.budget import Budget, BudgetExceeded, Journal
from m3.code.store import Store
from m3.code.worker import TaskOutcome, TaskSpec, run_task


class _ActorJournal:
    """The `Journal` interface, forwarded to the actor. Budget errors come back as strings, raised here."""

    def __init__(self, actor):
        self.actor = actor

    def _call(self, method: str, *args):
        import ray

        error = ray.get(getattr(self.actor, method).remote(*args))
        if error:
            raise BudgetExceeded(error)

    def check(self) -> None:
        self._call("check")

    def charge(self, task_id: str | None, num_tokens: int) -> None:
        self._call("charge", task_id, num_tokens)

    def step(self, task_id: str, kind: str, data: dict) -> None:
        self._call("step", task_id, kind, data)


class _JournalService:
    def __init__(self, store_path: str, run_id: str, budget: dict):
        self.journal = Journal(Store(store_path), run_id, Budget(**budget))

    def check(self) -> str | None:
        try:
            self.journal.check()
        except BudgetExceeded as e:
            return e.reason

    def charge(self, task_id: str | None, num_tokens: int) -> str | None:
        try:
            self.journal.charge(task_id, num_tokens)
        except BudgetExceeded as e:
            return e.reason

    def step(self, task_id: str, kind: str, data: dict) -> None:
        self.journal.step(task_id, kind, data)


def _run_remote(spec: TaskSpec, model, actor) -> TaskOutcome:
    from m3.code.model import ModelSpec

    if isinstance(model, ModelSpec):
        model = model.build()
    return run_task(spec, model, _ActorJournal(actor))


class RayExecutor:
    name = "ray"

    def __init__(self, model, address: str | None = None, max_workers: int = 4, init_kw: dict | None = None):
        """`model`: a `ModelSpec` (each worker builds its own client) or any picklable `ChatModel`."""
        import ray

        self.ray = ray
        self.model = model
        self.max_workers = max_workers
        if not ray.is_initialized():
            ray.init(address=address, **(init_kw or {}))
        resources = ray.cluster_resources()
        self.task_resources = {k: 1 for k in ("m3_model", "m3_sandbox") if resources.get(k, 0) >= 1}
        self._remote = ray.remote(_run_remote).options(num_cpus=1, resources=self.task_resources, max_retries=0)
        self.actor = None

    def attach(self, journal: Journal) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        node = self.ray.get_runtime_context().get_node_id()
        cls = self.ray.remote(num_cpus=0, max_concurrency=16)(_JournalService)
        self.actor = cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            str(journal.store.path), journal.run_id, journal.budget.to_dict()
        )

    def submit(self, spec: TaskSpec):
        assert self.actor is not None, "attach() a journal first"
        return self._remote.remote(spec, self.model, self.actor)

    def wait(self, handles: list, timeout_s: float) -> list[tuple[object, TaskOutcome]]:
        done, _ = self.ray.wait(handles, num_returns=1, timeout=timeout_s)
        out = []
        for ref in done:
            try:
                out.append((ref, self.ray.get(ref)))
            except Exception as e:  # noqa: BLE001 - a lost worker fails its task, not the run
                out.append((ref, TaskOutcome("?", "failed", error=f"ray: {type(e).__name__}: {e}", reason="crash")))
        return out

    def shutdown(self) -> None:
        if self.actor is not None:
            self.ray.kill(self.actor)
            self.actor = None
