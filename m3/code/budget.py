"""Run-wide limits (tokens, model calls, wall time) and the journal every model call goes through.

`Journal.charge` is called *before* a reply is acted on: it books the usage in the run store and raises
`BudgetExceeded` once a limit is passed, so no step runs on an over-budget reply. Wall time counts across
resumes (the store keeps the elapsed seconds of earlier sessions).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from m3.code.store import Store


class BudgetExceeded(RuntimeError):
    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(f"budget exceeded: {reason}")


@dataclass
class Budget:
    max_tokens: int | None = None  # prompt + completion, whole run
    max_calls: int | None = None  # model calls, whole run
    max_wall_s: float | None = None  # seconds, whole run, across resumes

    def to_dict(self) -> dict:
        return asdict(self)


class Journal:
    """Books usage and agent steps for one run. Thread-safe (the store is); on Ray it lives in an actor."""

    def __init__(self, store: Store, run_id: str, budget: Budget):
        self.store, self.run_id, self.budget = store, run_id, budget
        self._session_start = time.monotonic()
        self._elapsed_before = float(store.get_run(run_id)["elapsed_s"])

    def elapsed_s(self) -> float:
        return self._elapsed_before + time.monotonic() - self._session_start

    def save_elapsed(self) -> None:
        self.store.update_run(self.run_id, elapsed_s=self.elapsed_s())

    def check(self) -> None:
        """Raise if any run-wide limit is already passed."""
        run = self.store.get_run(self.run_id)
        b = self.budget
        if b.max_tokens is not None and run["num_tokens"] >= b.max_tokens:
            raise BudgetExceeded(f"tokens {run['num_tokens']} >= max_tokens {b.max_tokens}")
        if b.max_calls is not None and run["num_calls"] >= b.max_calls:
            raise BudgetExceeded(f"model calls {run['num_calls']} >= max_calls {b.max_calls}")
        if b.max_wall_s is not None and self.elapsed_s() >= b.max_wall_s:
            raise BudgetExceeded(f"wall time {self.elapsed_s():.1f}s >= max_wall_s {b.max_wall_s}s")

    def charge(self, task_id: str | None, num_tokens: int) -> None:
        self.store.charge(self.run_id, num_tokens, 1)
        if task_id is not None:
            self.store.add_task_usage(self.run_id, task_id, num_tokens, 0)
        self.check()

    def step(self, task_id: str, kind: str, data: dict) -> None:
        if kind == "step":
            self.store.add_task_usage(self.run_id, task_id, 0, 1)
        self.store.event(self.run_id, task_id, kind, data)
