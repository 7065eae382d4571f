"""Random paged MSA batches and naive masked attention, shared by the paged-reference, interpreter and GPU tests.

Keys carry a per-block bias and queries a per-query-block bias, so block scores are spread out (selections have no
near-ties) while token-level attention stays random. Unwritten cache slots hold NaN, so a kernel that reads past a
sequence's end, or an unselected page, fails loudly.
"""

import math
from dataclasses import dataclass

import torch

from m3.kernels.kv_cache_ref import store_kv_ref, summarize_blocks_ref
from m3.kernels.paged_ref import prefill_query_blocks


@dataclass
class Batch:
    q: torch.Tensor  # (T, H, D) prefill queries, or (B, H, D) decode queries
    k_cache: torch.Tensor  # (NB, S, Hkv, D)
    v_cache: torch.Tensor
    kmean: torch.Tensor  # (NB, Hkv, D)
    kmin: torch.Tensor
    kmax: torch.Tensor
    block_tables: torch.Tensor  # (B, max_blocks) int32
    cu_seqlens_q: torch.Tensor  # (B+1,) int32
    q_start: torch.Tensor  # (B,) int32
    seq_lens: torch.Tensor  # (B,) int32
    block_size: int

    def select_args(self):
        return (self.q, self.kmean, self.kmin, self.kmax, self.block_tables, self.cu_seqlens_q, self.q_start,
                self.seq_lens)  # fmt: skip

    def sparse_args(self):
        return (self.q, self.k_cache, self.v_cache, self.block_tables, self.cu_seqlens_q, self.q_start, self.seq_lens)

    def attention_args(self):
        return (self.q, self.k_cache, self.v_cache, self.kmean, self.kmin, self.kmax, self.block_tables,
                self.cu_seqlens_q, self.q_start, self.seq_lens)  # fmt: skip

    def decode_select_args(self):
        return (self.q, self.kmean, self.kmin, self.kmax, self.block_tables, self.seq_lens)

    def decode_sparse_args(self):
        return (self.q, self.k_cache, self.v_cache, self.block_tables, self.seq_lens)

    def decode_args(self):
        return (self.q, self.k_cache, self.v_cache, self.kmean, self.kmin, self.kmax, self.block_tables, self.seq_lens)


def make_batch(
    specs: list[tuple[int, int]],
    *,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    decode: bool = False,
    bias: float = 1.0,
) -> Batch:
    """specs: per sequence (tokens cached before the step, query tokens). decode=True: q is (B, H, D), one token per
    sequence at position seq_len - 1 (query length 1 or 0 for padding rows)."""
    gen = torch.Generator().manual_seed(seed)
    S, Hkv, D, H = block_size, num_kv_heads, head_dim, num_kv_heads * group
    seq_lens = [s + n for s, n in specs]
    nblk = [(n + S - 1) // S for n in seq_lens]
    num_blocks = sum(nblk) + 3
    max_blocks = max(nblk + [1]) + 2
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.full((len(specs), max_blocks), -1, dtype=torch.int32)
    used = 0
    for b, n in enumerate(nblk):
        tables[b, :n] = perm[used : used + n].int()
        used += n
    k_cache = torch.full((num_blocks, S, Hkv, D), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    kmean, kmin, kmax = (torch.full((num_blocks, Hkv, D), float("nan"), dtype=dtype) for _ in range(3))
    qs, full = [], []
    for b, (start, n) in enumerate(specs):
        L = seq_lens[b]
        kb = torch.randn(nblk[b], Hkv, D, generator=gen) * bias
        k = torch.randn(L, Hkv, D, generator=gen) + kb.repeat_interleave(S, 0)[:L]
        v = torch.randn(L, Hkv, D, generator=gen)
        pos = torch.arange(L)
        slots = tables[b].long()[pos // S] * S + pos % S
        store_kv_ref(k, v, k_cache, v_cache, slots)
        full.append(tables[b, : L // S].long())
        qb = torch.randn(nblk[b], H, D, generator=gen) * 2 * bias
        qpos = torch.arange(start, L) if not decode else torch.arange(L - 1, L)[: min(n, 1)]
        qs.append(torch.randn(len(qpos), H, D, generator=gen) + qb[qpos // S])
    summarize_blocks_ref(k_cache, torch.cat(full), kmean, kmin, kmax)
    q = torch.cat(qs).to(dtype)
    if decode:
        q = torch.stack([x[0] if len(x) else torch.zeros(H, D) for x in qs]).to(dtype)
    lens = [n if not decode else min(n, 1) for _, n in specs]
    cu = torch.tensor([0] + lens, dtype=torch.int32).cumsum(0).int()
    i32 = lambda x: torch.tensor(x, dtype=torch.int32)
    t = lambda x: x.to(device)
    return Batch(
        t(q), t(k_cache), t(v_cache), t(kmean), t(kmin), t(kmax), t(tables), t(cu),
        t(i32([s for s, _ in specs])), t(i32(seq_lens if not decode else [s + n for s, n in specs])), S,
    )  # fmt: skip


def allowed_mask(pos: torch.Tensor, sel_rows: torch.Tensor, seq_len: int, block_size: int, dense_below: int):
    """(n, Hkv, L) bool: keys each query token may see, from its selection row (n, Hkv, K), causality and
    dense_below."""
    key_block = torch.arange(seq_len, device=pos.device) // block_size
    inside = (sel_rows[..., None].long() == key_block).any(-2)  # (n, Hkv, L)
    causal = torch.arange(seq_len, device=pos.device)[None, :] <= pos[:, None]  # (n, L)
    dense = (pos < dense_below)[:, None, None]
    return (inside | dense) & causal[:, None, :]


def naive_attention(q, k, v, allowed, upcast: bool = True):
    """Masked softmax attention, q (n, H, D), k/v (L, Hkv, D), allowed (n, Hkv, L). upcast=False mimics a kernel in
    q's dtype: scores and the P.V product in that dtype, softmax in float32 (the flash-attention test reference)."""
    group = q.shape[1] // k.shape[1]
    dt = torch.float32 if upcast else q.dtype
    qq, kk, vv = (x.to(dt) for x in (q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)))
    s = torch.einsum("thd,lhd->thl", qq * (1 / math.sqrt(q.shape[-1])), kk).float()
    s = s.masked_fill(~allowed.repeat_interleave(group, 1), float("-inf"))
    p = torch.softmax(s, -1).to(dt)
    return torch.einsum("thl,lhd->thd", p, vv).float()


def seq_kv(batch: Batch, b: int):
    L, S = int(batch.seq_lens[b]), batch.block_size
    table = batch.block_tables[b, : (L + S - 1) // S].long()
    return batch.k_cache[table].flatten(0, 1)[:L], batch.v_cache[table].flatten(0, 1)[:L]


def naive_prefill(batch: Batch, sel: torch.Tensor, dense_below: int, upcast: bool = True) -> torch.Tensor:
    """Masked dense attention of every query token of a prefill batch, from its selection rows (Qmax, Hkv, K)."""
    S = batch.block_size
    qb_seq, qb_ids = prefill_query_blocks(batch.q.shape[0], batch.q_start, batch.seq_lens, S)
    out = torch.zeros(batch.q.shape, dtype=torch.float32, device=batch.q.device)
    cu = batch.cu_seqlens_q.tolist()
    for b in range(len(cu) - 1):
        if cu[b + 1] == cu[b]:
            continue
        k, v = seq_kv(batch, b)
        pos = torch.arange(int(batch.q_start[b]), int(batch.seq_lens[b]), device=batch.q.device)
        rows = (qb_seq == b).nonzero().squeeze(1)
        row_of = torch.searchsorted(qb_ids[rows].contiguous(), (pos // S).int())
        allowed = allowed_mask(pos, sel[rows][row_of], k.shape[0], S, dense_below)
        out[cu[b] : cu[b + 1]] = naive_attention(batch.q[cu[b] : cu[b + 1]], k, v, allowed, upcast)
    return out


def naive_decode(batch: Batch, pages: torch.Tensor, upcast: bool = True) -> torch.Tensor:
    out = torch.zeros(batch.q.shape, dtype=torch.float32, device=batch.q.device)
    for b, L in enumerate(batch.seq_lens.tolist()):
        if L <= 0:
            continue
        k, v = seq_kv(batch, b)
        pos = torch.tensor([L - 1], device=batch.q.device)
        allowed = allowed_mask(pos, pages[b : b + 1], L, batch.block_size, 0)
        out[b] = naive_attention(batch.q[b : b + 1], k, v, allowed, upcast)[0]
    return out


def selected_mass(batch: Batch, sel_rows: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Score mass of selected blocks: probs (R, Hkv, N) per logical block, sel_rows (R, Hkv, K) -> (R, Hkv)."""
    idx = sel_rows.long()
    return torch.where(idx >= 0, probs.gather(-1, idx.clamp(min=0)), 0.0).sum(-1)
