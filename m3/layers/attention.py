"""Attention over the paged KV cache: exact dense attention, or MSA block-sparse attention (msa.md).

The choice is per query token: dense for dense layers, attention="dense", or positions before `dense_below`;
MSA otherwise. Positions "remap"/"auto" follow msa.md. The ops come from m3.kernels (plain-torch references here;
the fast kernels plug in at the same boundaries).
"""

from dataclasses import dataclass

import torch

from m3.kernels.kv_cache_ref import store_kv_ref, summarize_blocks_ref, unrope
from m3.kernels.msa_attention_ref import dense_attention_ref, sparse_attention_ref
from m3.kernels.msa_select_ref import local_mask_ref, select_blocks_ref
from m3.kernels.remap import Remap
from m3.layers import triton_ops


@dataclass
class FilledBlocks:
    """KV blocks whose last slot is written in a step: their summaries are computed once the keys are stored."""

    blocks: torch.Tensor  # (M,) physical blocks
    starts: torch.Tensor  # (M,) absolute position of each block's first token
    cos_sin: tuple | None = None  # RoPE of their keys (M, S, D): computed by the first layer that needs it, shared


@dataclass
class AttentionMetadata:
    """What one step's attention needs to know about its batch (B sequences, T query tokens)."""

    positions: torch.Tensor  # (T,) absolute position of each query token
    slot_mapping: torch.Tensor  # (T,) flat cache slot (block * S + offset) of each new token
    cu_seqlens_q: torch.Tensor  # (B+1,) query-token offsets per sequence
    q_start: list[int]  # per sequence: tokens cached before this step (= first query position)
    num_prompt_tokens: list[int]  # per sequence: generated tokens after these form one-token query blocks
    seq_lens: list[int]  # per sequence: tokens cached after this step
    block_tables: torch.Tensor  # (B, max_blocks) physical block of each logical block, -1 padded
    filled: FilledBlocks  # blocks that became full this step (empty in a CUDA-graph step: the runner summarises)
    q_start_t: torch.Tensor | None = None  # (B,) int32 copies on the device, for the fast kernels
    seq_lens_t: torch.Tensor | None = None
    # first query block that remaps positions (0 = all, None = none): remap_from_block of the step's lengths, chosen
    # once per step by the runner (and fixed per captured CUDA graph)
    remap_from: int | None = None


@dataclass
class LayerCache:
    """One layer's paged cache: k, v (NB, S, Hkv, D) and key summaries (NB, Hkv, D) of full blocks.

    raw_*: summaries of keys with RoPE undone, kept only when remapped positions may be used.
    """

    k: torch.Tensor
    v: torch.Tensor
    kmean: torch.Tensor
    kmin: torch.Tensor
    kmax: torch.Tensor
    raw_kmean: torch.Tensor | None = None
    raw_kmin: torch.Tensor | None = None
    raw_kmax: torch.Tensor | None = None


@dataclass
class MSAParams:
    """The attention knobs one layer uses (copied out of Config once)."""

    use_msa: bool
    block_size: int
    sink_blocks: int
    window_blocks: int
    topk_blocks: int
    dense_below: int
    score: str
    positions: str  # true | remap | auto
    trained_len: int  # "auto" remaps query blocks that reach past this


def remap_from_block(p: MSAParams, q_start: list[int], seq_lens: list[int]) -> int | None:
    """First query block that remaps positions in a step (0 = all of them), None if none does; as _msa_seq."""
    bs = p.block_size
    if p.positions == "true":
        return None
    if p.positions == "remap":
        return 0
    first = p.trained_len // bs  # "auto": query block i remaps iff (i + 1) * S > trained_len
    lasts = [(n - 1) // bs for n, s in zip(seq_lens, q_start) if n > s]
    if not lasts or max(lasts) < first:
        return None
    return 0 if min(s // bs for n, s in zip(seq_lens, q_start) if n > s) >= first else first


class PagedAttention(torch.nn.Module):
    """softmax(q k^T / sqrt(D)) v over the cache, for one layer; q/k arrive already rotated."""

    def __init__(self, layer_idx: int, num_heads: int, num_kv_heads: int, head_dim: int, msa: MSAParams, rotary):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.msa = msa
        self.rotary = rotary
        self.cache: LayerCache | None = None  # bound by the model runner
        self.last_selected_share: float | None = None  # share of cached blocks read by the last MSA step

    def forward(self, q: torch.Tensor, q_raw: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata):
        """q, q_raw (T, H, D) post/pre-RoPE queries; k, v (T, Hkv, D) new keys (post-RoPE) and values."""
        if triton_ops.use_kernels(q):
            return self._forward_kernels(q, q_raw, k, v, meta)
        cache = self.cache
        store_kv_ref(k, v, cache.k, cache.v, meta.slot_mapping)
        self.summarize(meta.filled)
        out = torch.empty_like(q)
        decode_dense = [b for b in range(len(meta.q_start)) if self._all_dense(meta, b) and self._is_decode(meta, b)]
        if decode_dense:
            self._dense_decode_batch(q, meta, decode_dense, out)
        for b in range(len(meta.q_start)):
            if b in decode_dense:
                continue
            s, e = int(meta.cu_seqlens_q[b]), int(meta.cu_seqlens_q[b + 1])
            out[s:e] = self._attend_seq(q[s:e], q_raw[s:e], meta.positions[s:e], meta, b)
        return out

    def _forward_kernels(self, q, q_raw, k, v, meta: AttentionMetadata) -> torch.Tensor:
        """The Triton path (docs/kernels.md): batched over sequences, no per-sequence Python."""
        ops, cache, p = triton_ops.kernels(), self.cache, self.msa
        ops.store_kv(k, v, cache.k, cache.v, meta.slot_mapping)
        self.summarize(meta.filled)
        # a dense layer is MSA with every query below dense_below: the kernels then walk every earlier block (a
        # constant, not this step's longest length, so a CUDA graph's replays share it)
        dense_below = p.dense_below if p.use_msa else 1 << 30
        knobs = dict(
            block_size=p.block_size,
            sink_blocks=p.sink_blocks,
            window_blocks=p.window_blocks,
            topk_blocks=p.topk_blocks,
            score=p.score,
            dense_below=dense_below,
            remap=self._remap_inputs(q_raw, meta) if p.use_msa else None,
        )
        kmin = cache.kmin if p.score == "bound" else None
        kmax = cache.kmax if p.score == "bound" else None
        if len(meta.seq_lens) == q.shape[0]:  # one query token per sequence: a decode step
            out = ops.msa_decode_attention(
                q, cache.k, cache.v, cache.kmean, kmin, kmax, meta.block_tables, meta.seq_lens_t, **knobs
            )
        else:
            out = ops.msa_prefill_attention(
                q,
                cache.k,
                cache.v,
                cache.kmean,
                kmin,
                kmax,
                meta.block_tables,
                meta.cu_seqlens_q,
                meta.q_start_t,
                meta.seq_lens_t,
                **knobs,
            )
        self.record_share(meta.seq_lens)  # (a CUDA-graph step passes dummy lengths: the runner records after replay)
        return out

    def record_share(self, seq_lens: list[int]):
        """last_selected_share of a kernel step: every sparse selection holds min(K, blocks so far), so the share
        follows from the lengths alone."""
        bs, p = self.msa.block_size, self.msa
        if not p.use_msa:
            return
        width = p.sink_blocks + p.window_blocks + 1 + p.topk_blocks
        shares = [min(width, -(-n // bs)) / -(-n // bs) for n in seq_lens if n > p.dense_below]
        if shares:
            self.last_selected_share = sum(shares) / len(shares)

    def _remap_inputs(self, q_raw: torch.Tensor, meta: AttentionMetadata) -> Remap | None:
        """Remap inputs of the kernels (m3/kernels/remap.py) for this step, or None."""
        from_block = meta.remap_from
        if from_block is None:
            return None
        p, cache = self.msa, self.cache
        assert cache.raw_kmean is not None, "remap needs raw summaries: the runner allocates them"
        q_remote = self.rotary.at_distance(q_raw, p.window_blocks * p.block_size)
        tables = self.rotary.page_tables(meta.block_tables.shape[1], p.block_size, q_raw.device)
        raw_min = cache.raw_kmin if p.score == "bound" else None
        raw_max = cache.raw_kmax if p.score == "bound" else None
        return Remap(q_remote, cache.raw_kmean, raw_min, raw_max, *tables, p.window_blocks, from_block)

    def summarize(self, filled: FilledBlocks):
        """Key summaries of the blocks filled this step (with raw ones when remap may be used)."""
        cache, bs = self.cache, self.msa.block_size
        if filled.blocks.numel() == 0:
            return
        summarize = triton_ops.kernels().summarize_blocks if triton_ops.use_kernels(cache.k) else summarize_blocks_ref
        summarize(cache.k, filled.blocks, cache.kmean, cache.kmin, cache.kmax)
        if cache.raw_kmean is None:
            return
        if filled.cos_sin is None:  # the same angles for every layer of the step
            pos = filled.starts[:, None] + torch.arange(bs, device=cache.k.device)  # (M, S)
            filled.cos_sin = self.rotary.cos_sin(pos)
        summarize_blocks_ref(cache.k, filled.blocks, cache.raw_kmean, cache.raw_kmin, cache.raw_kmax, filled.cos_sin)

    # -- helpers --

    def _all_dense(self, meta: AttentionMetadata, b: int) -> bool:
        return not self.msa.use_msa or meta.seq_lens[b] <= self.msa.dense_below

    @staticmethod
    def _is_decode(meta: AttentionMetadata, b: int) -> bool:
        return meta.seq_lens[b] - meta.q_start[b] == 1

    def _gather(self, meta: AttentionMetadata, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        seq_len, bs = meta.seq_lens[b], self.msa.block_size
        table = meta.block_tables[b, : (seq_len + bs - 1) // bs].long()
        k = self.cache.k[table].flatten(0, 1)[:seq_len]  # (L, Hkv, D)
        v = self.cache.v[table].flatten(0, 1)[:seq_len]
        return k, v

    def _dense_decode_batch(self, q: torch.Tensor, meta: AttentionMetadata, rows: list[int], out: torch.Tensor):
        # NOTE: one padded SDPA for all dense decodes; a python loop per sequence costs more than the math.
        bs = self.msa.block_size
        lens = torch.tensor([meta.seq_lens[b] for b in rows], device=q.device)
        num_blocks = int((lens.max() + bs - 1) // bs)
        tables = meta.block_tables[rows, :num_blocks].long().clamp(min=0)  # (B', N)
        k = self.cache.k[tables].flatten(1, 2)  # (B', N*S, Hkv, D)
        v = self.cache.v[tables].flatten(1, 2)
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B', Hkv, N*S, D); SDPA shares them across each group
        mask = torch.arange(k.shape[2], device=q.device)[None, :] < lens[:, None]  # (B', N*S)
        idx = meta.cu_seqlens_q[rows].long()
        qq = q[idx][:, :, None, :]  # (B', H, 1, D)
        o = torch.nn.functional.scaled_dot_product_attention(
            qq, k.to(q.dtype), v.to(q.dtype), attn_mask=mask[:, None, None, :], enable_gqa=True
        )
        out[idx] = o[:, :, 0, :]

    def _attend_seq(self, q, q_raw, pos, meta: AttentionMetadata, b: int) -> torch.Tensor:
        k, v = self._gather(meta, b)
        p = self.msa
        if self._all_dense(meta, b):
            return dense_attention_ref(q, pos, k, v)
        out = torch.empty_like(q)
        is_dense = pos < p.dense_below
        if is_dense.any():
            out[is_dense] = dense_attention_ref(q[is_dense], pos[is_dense], k, v)
        sparse = ~is_dense
        if sparse.any():
            out[sparse] = self._msa_seq(q[sparse], q_raw[sparse], pos[sparse], k, v, meta, b)
        return out

    def _msa_seq(self, q, q_raw, pos, k, v, meta: AttentionMetadata, b: int) -> torch.Tensor:
        p, cache = self.msa, self.cache
        bs = p.block_size
        # query blocks: S prompt tokens each; a generated token is its own query block, as when it was decoded,
        # so recomputing a preempted sequence reproduces it exactly
        token_block = torch.div(pos, bs, rounding_mode="floor")
        group_key = torch.where(pos < meta.num_prompt_tokens[b], token_block, -1 - pos)
        _, token_rows, counts = torch.unique_consecutive(group_key, return_inverse=True, return_counts=True)
        qblock_ids = token_block[torch.cumsum(counts, 0) - counts]  # (Q,) block index i of each query block
        # -- which query blocks remap positions (msa.md "Positions") --
        if p.positions == "remap":
            is_remap = torch.ones_like(qblock_ids, dtype=torch.bool)
        elif p.positions == "auto":
            is_remap = (qblock_ids + 1) * bs > p.trained_len
        else:
            is_remap = torch.zeros_like(qblock_ids, dtype=torch.bool)
        q_remote = k_raw = None
        if is_remap.any():
            assert cache.raw_kmean is not None, "remap needs raw summaries: the runner allocates them"
            q_remote = self.rotary.at_distance(q_raw, p.window_blocks * bs)
            cos_k, sin_k = self.rotary.cos_sin(torch.arange(k.shape[0], device=k.device))
            k_raw = unrope(k.float(), cos_k[:, None, :], sin_k[:, None, :])
        # -- select per query block: true-position scoring, or remote scoring on raw summaries --
        num_full = meta.seq_lens[b] // bs
        table = meta.block_tables[b, :num_full].long()
        max_sel = p.sink_blocks + p.window_blocks + 1 + p.topk_blocks
        sel = torch.empty(len(qblock_ids), self.num_kv_heads, max_sel, dtype=torch.long, device=q.device)
        for remap in (False, True):
            rows = (is_remap == remap).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            src = q_remote if remap else q
            qbar = torch.stack([t.float().mean(0) for t in torch.split(src, counts.tolist())])[rows]  # (Q', H, D)
            sums = (cache.raw_kmean, cache.raw_kmin, cache.raw_kmax) if remap else (cache.kmean, cache.kmin, cache.kmax)
            sel[rows] = select_blocks_ref(
                qbar,
                qblock_ids[rows],
                *(s[table] for s in sums),
                sink_blocks=p.sink_blocks,
                window_blocks=p.window_blocks,
                topk_blocks=p.topk_blocks,
                score=p.score,
            )
        self.last_selected_share = float((sel >= 0).sum(-1).float().mean() / max(1, (meta.seq_lens[b] + bs - 1) // bs))
        is_local = local_mask_ref(sel, qblock_ids, p.window_blocks)
        return sparse_attention_ref(
            q,
            pos,
            k,
            v,
            sel,
            qblock_ids,
            bs,
            q_remote=q_remote,
            k_raw=k_raw,
            is_local=is_local,
            is_remap=is_remap,
            token_rows=token_rows,
        )
