"""Admission to the engine by plan priority: at most `max_seqs` sequences run at once; when the engine is full,
waiting requests are admitted highest priority first (Max before Plus), first come first served within a priority.

The engine itself schedules first come first served, so priority lives here, in front of it.
"""

import asyncio
import heapq
import itertools
from contextlib import asynccontextmanager


class AdmissionGate:
    def __init__(self, max_seqs: int | None):
        self.max_seqs = max_seqs
        self.num_running = 0
        self._waiting: list[tuple[int, int, int, asyncio.Future]] = []
        self._order = itertools.count()

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def admit(self, priority: int, num_seqs: int = 1):
        if self.max_seqs is None:
            yield
            return
        num_seqs = min(num_seqs, self.max_seqs)  # NOTE: a request wider than the gate runs alone
        if not self._waiting and self.num_running + num_seqs <= self.max_seqs:
            self.num_running += num_seqs
        else:
            future = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiting, (-priority, next(self._order), num_seqs, future))
            try:
                await future  # the releaser counted us in before waking us
            except BaseException:
                if future.done() and not future.cancelled():
                    self._release(num_seqs)
                else:
                    self._waiting = [w for w in self._waiting if w[3] is not future]
                    heapq.heapify(self._waiting)
                    self._wake()  # a wide request that gave up may have been holding back narrower ones
                raise
        try:
            yield
        finally:
            self._release(num_seqs)

    def _release(self, num_seqs: int):
        self.num_running -= num_seqs
        self._wake()

    def _wake(self):
        while self._waiting and self.num_running + self._waiting[0][2] <= self.max_seqs:
            _, _, n, future = heapq.heappop(self._waiting)
            if future.done():
                continue
            self.num_running += n
            future.set_result(None)
