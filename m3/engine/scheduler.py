"""Scheduler: continuous batching with chunked prefill and preemption by recompute.

Each step mixes decodes (one token per running sequence, scheduled first) with prefill chunks under the token
budget. Chunks end on block boundaries, so MSA's query blocks never straddle two steps. When pages run out, the
newest running sequence is preempted: its pages are freed and it is recomputed later from its tokens.
"""

from collections import deque
from dataclasses import dataclass, field

from m3.engine.block_manager import BlockManager
from m3.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)  # query tokens of each sequence in this step

    def __len__(self) -> int:
        return len(self.seqs)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        self.block_manager = block_manager
        self.block_size = block_manager.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence):
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> list[Sequence]:
        """Remove every sequence of the request and free its pages."""
        gone = [s for s in (*self.waiting, *self.running) if s.request_id == request_id]
        for seq in gone:
            if seq in self.running:
                self.running.remove(seq)
            else:
                self.waiting.remove(seq)
            self.block_manager.free(seq)
            seq.status = SequenceStatus.FINISHED
            seq.finish_reason = "abort"
        return gone

    def finish(self, seq: Sequence):
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.FINISHED

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        # -- running sequences: decodes first, then unfinished prefills, oldest first --
        order = sorted(self.running, key=lambda s: (len(s) - s.num_computed_tokens > 1, self.running.index(s)))
        for seq in order:
            if seq not in self.running:
                continue  # preempted while making room for an earlier one
            n = self._chunk(seq, budget)
            if n == 0:
                continue
            if not self._make_room(seq, n, batch):
                continue
            budget -= n
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
        # -- waiting sequences, in arrival order --
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            n = self._chunk(seq, budget)
            if n == 0 or not self.block_manager.can_allocate(seq, n):
                break
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            self.block_manager.allocate(seq, n)
            budget -= n
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
        return batch

    def _chunk(self, seq: Sequence, budget: int) -> int:
        remaining = len(seq) - seq.num_computed_tokens
        if remaining <= budget:
            return remaining
        # end the chunk on a block boundary (absolute positions) so query blocks stay whole
        end = (seq.num_computed_tokens + budget) // self.block_size * self.block_size
        return max(0, end - seq.num_computed_tokens)

    def _make_room(self, seq: Sequence, n: int, batch: ScheduledBatch) -> bool:
        """Allocate pages for n tokens of seq, preempting the newest other sequences if needed."""
        while not self.block_manager.can_allocate(seq, n):
            victim = self.running[-1]
            self._preempt(victim, batch)
            if victim is seq:
                return False
        self.block_manager.allocate(seq, n)
        return True

    def _preempt(self, seq: Sequence, batch: ScheduledBatch):
        if seq in batch.seqs:
            i = batch.seqs.index(seq)
            del batch.seqs[i], batch.num_tokens[i]
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
