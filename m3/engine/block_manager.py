"""BlockManager: the free list of KV-cache pages (one page = one MSA block of S tokens) and each sequence's table.

Block summaries live beside the pages in the cache tensors; the manager only says which blocks filled in a step.
"""

from collections import deque

from m3.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.free_ids: deque[int] = deque(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free_ids)

    def blocks_needed(self, seq: Sequence, num_new_tokens: int) -> int:
        total = seq.num_computed_tokens + num_new_tokens
        return max(0, -(-total // self.block_size) - len(seq.block_table))

    def can_allocate(self, seq: Sequence, num_new_tokens: int) -> bool:
        return self.blocks_needed(seq, num_new_tokens) <= self.num_free

    def allocate(self, seq: Sequence, num_new_tokens: int):
        """Grow seq's table to hold num_new_tokens more tokens."""
        need = self.blocks_needed(seq, num_new_tokens)
        assert need <= self.num_free, "caller checks can_allocate first"
        seq.block_table.extend(self.free_ids.popleft() for _ in range(need))

    def free(self, seq: Sequence):
        self.free_ids.extend(seq.block_table)
        seq.block_table = []
        seq.num_computed_tokens = 0

    def usage(self) -> float:
        return 1.0 - self.num_free / self.num_blocks
