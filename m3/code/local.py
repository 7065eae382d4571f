"""The default executor: sub-tasks run on a thread pool in this process, sharing one model client.

Threads suffice: a worker spends its time waiting on HTTP and on sandboxed subprocesses, not on Python.
"""

from __future__ import annotations

import concurrent.futures as cf

from m3.code.budget import Journal
from m3.code.model import ChatModel
from m3.code.worker import TaskOutcome, TaskSpec, run_task


class LocalExecutor:
    name = "local"

    def __init__(self, model: ChatModel, max_workers: int = 4):
        self.model = model
        self.max_workers = max_workers
        self._pool: cf.ThreadPoolExecutor | None = None
        self.journal: Journal | None = None

    def attach(self, journal: Journal) -> None:
        self.journal = journal
        self._pool = cf.ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="m3-task")

    def submit(self, spec: TaskSpec) -> cf.Future:
        assert self.journal is not None, "attach() a journal first"
        return self._pool.submit(run_task, spec, self.model, self.journal)

    def wait(self, handles: list[cf.Future], timeout_s: float) -> list[tuple[cf.Future, TaskOutcome]]:
        done, _ = cf.wait(handles, timeout=timeout_s, return_when=cf.FIRST_COMPLETED)
        return [(h, h.result()) for h in done]

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
