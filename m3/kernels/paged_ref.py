"""Batched paged MSA references: the CPU path of the engine and the executable spec of the Triton launchers.

Every public function has the signature of its Triton twin (msa_select.py, msa_prefill.py, msa_decode.py) and is
built by gathering each sequence's blocks through its block table and calling the per-sequence refs. The metadata
helpers here (query-block table, sizes) are shared with the launchers, so both index the same rows.
Remapped positions (msa.md) come in as a `remap.Remap` (None = true positions everywhere).
"""

import torch

from m3.kernels.kv_cache_ref import unrope
from m3.kernels.msa_attention_ref import dense_attention_ref, sparse_attention_ref
from m3.kernels.msa_select_ref import local_mask_ref, select_blocks_ref
from m3.kernels.remap import Remap, key_cos_sin, remap_rows


def num_selected(sink_blocks: int, window_blocks: int, topk_blocks: int) -> int:
    """K: width of a selection row (sinks + window + current block + top-k)."""
    return sink_blocks + window_blocks + 1 + topk_blocks


def num_decode_pages(
    block_size: int, sink_blocks: int, window_blocks: int, topk_blocks: int, dense_below: int, max_blocks: int
) -> int:
    """KD: width of a decode page list, big enough for an MSA selection or for every block of a dense sequence."""
    dense_pages = min(max(0, (dense_below + block_size - 1) // block_size), max_blocks)
    return max(num_selected(sink_blocks, window_blocks, topk_blocks), dense_pages)


def max_query_blocks(num_tokens: int, num_seqs: int, block_size: int) -> int:
    """Upper bound on the query blocks of a step, from shapes only (no device sync): each sequence adds at most one
    block more than its tokens fill, plus one for an unaligned start."""
    return num_tokens // block_size + 2 * num_seqs


def query_block_counts(q_start: torch.Tensor, seq_lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """(B,) number of query blocks (absolute position // S) each sequence's query tokens touch."""
    first = torch.div(q_start, block_size, rounding_mode="floor")
    last = torch.div(seq_lens - 1, block_size, rounding_mode="floor")
    return torch.where(seq_lens > q_start, last - first + 1, torch.zeros_like(first)).long()


def segment_rows(counts: torch.Tensor, num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows 0..num_rows-1 laid out as consecutive segments of `counts` (B,): (segment, offset) of each row, -1 past
    the end. Device-side torch only, so it needs no host sync (and can sit in a CUDA graph)."""
    rows = torch.arange(num_rows, device=counts.device)
    if counts.numel() == 0:
        none = torch.full_like(rows, -1, dtype=torch.int32)
        return none, none.clone()
    cum = torch.cumsum(counts, 0)  # (B,) int64
    seg = torch.searchsorted(cum, rows, right=True)
    valid = seg < counts.shape[0]
    seg_c = seg.clamp(max=max(counts.shape[0] - 1, 0))
    offset = rows - (cum[seg_c] - counts[seg_c])
    return torch.where(valid, seg, -1).int(), torch.where(valid, offset, -1).int()


def prefill_query_blocks(
    num_tokens: int, q_start: torch.Tensor, seq_lens: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The query-block table of a step: qb_seq, qb_ids (Qmax,) int32 = sequence and absolute block index of each
    selection row, -1 padded; rows of one sequence are consecutive and ascending. Qmax = max_query_blocks(...)."""
    num_rows = max_query_blocks(num_tokens, q_start.shape[0], block_size)
    counts = query_block_counts(q_start, seq_lens, block_size)
    seq, offset = segment_rows(counts, num_rows)
    first = torch.div(q_start, block_size, rounding_mode="floor")
    ids = torch.where(seq >= 0, first[seq.clamp(min=0).long()] + offset, -1)
    return seq, ids.int()


def _seq_kv(k_cache, v_cache, block_tables, b: int, seq_len: int):
    bs = k_cache.shape[1]
    table = block_tables[b, : (seq_len + bs - 1) // bs].long()
    return k_cache[table].flatten(0, 1)[:seq_len], v_cache[table].flatten(0, 1)[:seq_len]  # (L, Hkv, D)


def _summaries(kmean, kmin, kmax, block_tables, b: int, num_full: int):
    table = block_tables[b, :num_full].long()
    return [None if s is None else s[table] for s in (kmean, kmin, kmax)]  # (N, Hkv, D) in logical order


# -- prefill --


def prefill_qbar_ref(
    q: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    q_start: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    block_size: int,
    dense_below: int,
) -> torch.Tensor:
    """Scoring query of every selection row: qbar (Qmax, H, D) float32, the mean of the row's query tokens in this
    step at positions >= dense_below (all of them if there are none: that block attends densely, its selection is
    unused). Rows past the table are zero."""
    num_tokens, num_heads, head_dim = q.shape
    qb_seq, qb_ids = prefill_query_blocks(num_tokens, q_start, seq_lens, block_size)
    qbar = torch.zeros(qb_seq.shape[0], num_heads, head_dim, dtype=torch.float32, device=q.device)
    cu, starts = cu_seqlens_q.tolist(), q_start.tolist()
    for b in range(len(starts)):
        n = cu[b + 1] - cu[b]
        if n == 0:
            continue
        pos = torch.arange(starts[b], starts[b] + n, device=q.device)
        rows = (qb_seq == b).nonzero().squeeze(1)
        row = torch.div(pos, block_size, rounding_mode="floor") - qb_ids[rows[0]]  # (n,) row of each token
        weight = (pos >= dense_below).float()
        has_msa = torch.zeros(len(rows), device=q.device).index_add_(0, row, weight) > 0
        weight = torch.where(has_msa[row], weight, 1.0)
        qsum = torch.zeros(len(rows), num_heads, head_dim, device=q.device)
        qsum.index_add_(0, row, q[cu[b] : cu[b + 1]].float() * weight[:, None, None])
        cnt = torch.zeros(len(rows), device=q.device).index_add_(0, row, weight)
        qbar[rows] = qsum / cnt[:, None, None]
    return qbar


def msa_prefill_select_ref(
    q: torch.Tensor,
    kmean: torch.Tensor,
    kmin: torch.Tensor | None,
    kmax: torch.Tensor | None,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    q_start: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    block_size: int,
    sink_blocks: int,
    window_blocks: int,
    topk_blocks: int,
    score: str,
    dense_below: int,
    remap: Remap | None = None,
) -> torch.Tensor:
    """Selection rows of every query block of a prefill step. Returns sel (Qmax, Hkv, K) int32, row w for the query
    block (qb_seq[w], qb_ids[w]) of prefill_query_blocks, logical block ids ascending, -1 padded; scored with
    prefill_qbar_ref."""
    num_kv_heads = kmean.shape[1]
    qb_seq, qb_ids = prefill_query_blocks(q.shape[0], q_start, seq_lens, block_size)
    sel = torch.full((qb_seq.shape[0], num_kv_heads, num_selected(sink_blocks, window_blocks, topk_blocks)), -1,
                     dtype=torch.int32, device=q.device)  # fmt: skip
    is_remap = remap_rows(qb_ids, remap)
    # remapped rows score with q_remote against the summaries of un-rotated keys
    for remapped in (False, True):
        if not bool((is_remap == remapped).any()):
            continue
        src, sums_all = (remap.q_remote, remap[1:4]) if remapped else (q, (kmean, kmin, kmax))
        qbar = prefill_qbar_ref(src, cu_seqlens_q, q_start, seq_lens, block_size=block_size, dense_below=dense_below)
        for b, seq_len in enumerate(seq_lens.tolist()):
            rows = ((qb_seq == b) & (is_remap == remapped)).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            sums = _summaries(*sums_all, block_tables, b, seq_len // block_size)
            sel[rows] = select_blocks_ref(
                qbar[rows], qb_ids[rows].long(), *sums, sink_blocks=sink_blocks, window_blocks=window_blocks,
                topk_blocks=topk_blocks, score=score,
            ).int()  # fmt: skip
    return sel


def msa_prefill_sparse_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    q_start: torch.Tensor,
    seq_lens: torch.Tensor,
    sel: torch.Tensor,
    *,
    dense_below: int,
    remap: Remap | None = None,
) -> torch.Tensor:
    """Attention of a prefill step given its selection: exact dense causal for tokens at positions < dense_below,
    block-sparse over sel (Qmax, Hkv, K) otherwise. q (T, H, D) -> o (T, H, D) in q's dtype (math in float32)."""
    block_size = k_cache.shape[1]
    out = torch.zeros_like(q)
    qb_seq, qb_ids = prefill_query_blocks(q.shape[0], q_start, seq_lens, block_size)
    cu, starts, lens = cu_seqlens_q.tolist(), q_start.tolist(), seq_lens.tolist()
    for b in range(len(starts)):
        n = cu[b + 1] - cu[b]
        if n == 0:
            continue
        k, v = _seq_kv(k_cache, v_cache, block_tables, b, lens[b])
        pos = torch.arange(starts[b], starts[b] + n, device=q.device)
        qb = q[cu[b] : cu[b + 1]]
        o = torch.empty_like(qb)
        dense = pos < dense_below
        if dense.any():
            o[dense] = dense_attention_ref(qb[dense], pos[dense], k, v)
        if (~dense).any():
            rows = (qb_seq == b).nonzero().squeeze(1)
            ids = qb_ids[rows].long()
            pos_s = pos[~dense]
            used = torch.isin(ids, torch.div(pos_s, block_size, rounding_mode="floor"))
            o[~dense] = sparse_attention_ref(
                qb[~dense], pos_s, k, v, sel[rows[used]].long(), ids[used], block_size,
                **_remap_args(remap, cu[b], n, ~dense, k, sel[rows[used]].long(), ids[used]),
            )  # fmt: skip
        out[cu[b] : cu[b + 1]] = o
    return out


def _remap_args(remap: Remap | None, first: int, n: int, keep: torch.Tensor, k, sel_rows, ids) -> dict:
    """Remap keywords of sparse_attention_ref for n query tokens from row `first` (kept where `keep`)."""
    if remap is None:
        return {}
    cos, sin = key_cos_sin(remap, torch.arange(k.shape[0], device=k.device))
    return dict(
        q_remote=remap.q_remote[first : first + n][keep],
        k_raw=unrope(k.float(), cos[:, None, :], sin[:, None, :]),
        is_local=local_mask_ref(sel_rows, ids, remap.window_blocks),
        is_remap=remap_rows(ids, remap),
    )


def msa_prefill_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kmean: torch.Tensor,
    kmin: torch.Tensor | None,
    kmax: torch.Tensor | None,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    q_start: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    block_size: int,
    sink_blocks: int,
    window_blocks: int,
    topk_blocks: int,
    score: str,
    dense_below: int,
    remap: Remap | None = None,
    return_sel: bool = False,
):
    """MSA prefill of a batch over the paged cache (selection + attention). Returns o (T, H, D), or (o, sel)."""
    assert k_cache.shape[1] == block_size
    sel = msa_prefill_select_ref(
        q,
        kmean,
        kmin,
        kmax,
        block_tables,
        cu_seqlens_q,
        q_start,
        seq_lens,
        block_size=block_size,
        sink_blocks=sink_blocks,
        window_blocks=window_blocks,
        topk_blocks=topk_blocks,
        score=score,
        dense_below=dense_below,
        remap=remap,
    )
    o = msa_prefill_sparse_ref(
        q, k_cache, v_cache, block_tables, cu_seqlens_q, q_start, seq_lens, sel, dense_below=dense_below, remap=remap
    )
    return (o, sel) if return_sel else o


# -- decode --


def msa_decode_select_ref(
    q: torch.Tensor,
    kmean: torch.Tensor,
    kmin: torch.Tensor | None,
    kmax: torch.Tensor | None,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    block_size: int,
    sink_blocks: int,
    window_blocks: int,
    topk_blocks: int,
    score: str,
    dense_below: int,
    remap: Remap | None = None,
) -> torch.Tensor:
    """Page list of one decode step: pages (B, Hkv, KD) int32 logical blocks ascending, -1 padded. A sequence whose
    token sits below dense_below lists all its blocks; one with seq_len <= 0 (padding) lists none."""
    num_seqs, num_kv_heads = q.shape[0], kmean.shape[1]
    width = num_decode_pages(block_size, sink_blocks, window_blocks, topk_blocks, dense_below, block_tables.shape[1])
    pages = torch.full((num_seqs, num_kv_heads, width), -1, dtype=torch.int32, device=q.device)
    for b, seq_len in enumerate(seq_lens.tolist()):
        if seq_len <= 0:
            continue
        i = (seq_len - 1) // block_size
        if seq_len - 1 < dense_below:
            pages[b, :, : i + 1] = torch.arange(i + 1, dtype=torch.int32, device=q.device)
            continue
        remapped = remap is not None and i >= remap.from_block
        src, sums_all = (remap.q_remote, remap[1:4]) if remapped else (q, (kmean, kmin, kmax))
        sums = _summaries(*sums_all, block_tables, b, seq_len // block_size)
        sel = select_blocks_ref(
            src[b : b + 1].float(),
            torch.tensor([i], device=q.device),
            *sums,
            sink_blocks=sink_blocks,
            window_blocks=window_blocks,
            topk_blocks=topk_blocks,
            score=score,
        )  # (1, Hkv, K)
        pages[b, :, : sel.shape[-1]] = sel[0].int()
    return pages


def msa_decode_sparse_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    pages: torch.Tensor,
    *,
    dense_below: int = 0,
    remap: Remap | None = None,
) -> torch.Tensor:
    """Attention of one query token per sequence over its page list. q (B, H, D) -> o (B, H, D); zeros where
    seq_len <= 0. With remap, a sequence whose token sits at or past dense_below scores its remote pages remapped."""
    block_size = k_cache.shape[1]
    out = torch.zeros_like(q)
    for b, seq_len in enumerate(seq_lens.tolist()):
        if seq_len <= 0:
            continue
        k, v = _seq_kv(k_cache, v_cache, block_tables, b, seq_len)
        pos = torch.tensor([seq_len - 1], device=q.device)
        ids = torch.div(pos, block_size, rounding_mode="floor")
        rows = pages[b : b + 1].long()
        sparse_remap = remap if seq_len - 1 >= dense_below else None
        extra = _remap_args(sparse_remap, b, 1, torch.ones(1, dtype=torch.bool, device=q.device), k, rows, ids)
        out[b] = sparse_attention_ref(q[b : b + 1], pos, k, v, rows, ids, block_size, **extra)[0]
    return out


def msa_decode_attention_ref(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    kmean: torch.Tensor,
    kmin: torch.Tensor | None,
    kmax: torch.Tensor | None,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    block_size: int,
    sink_blocks: int,
    window_blocks: int,
    topk_blocks: int,
    score: str,
    dense_below: int,
    remap: Remap | None = None,
    return_sel: bool = False,
):
    """MSA decode of B sequences, one query token each (at position seq_len - 1, already in the cache).
    q (B, H, D) -> o (B, H, D), or (o, pages (B, Hkv, KD))."""
    assert k_cache.shape[1] == block_size
    pages = msa_decode_select_ref(
        q,
        kmean,
        kmin,
        kmax,
        block_tables,
        seq_lens,
        block_size=block_size,
        sink_blocks=sink_blocks,
        window_blocks=window_blocks,
        topk_blocks=topk_blocks,
        score=score,
        dense_below=dense_below,
        remap=remap,
    )
    o = msa_decode_sparse_ref(q, k_cache, v_cache, block_tables, seq_lens, pages, dense_below=dense_below, remap=remap)
    return (o, pages) if return_sel else o
