"""Triton MSA block-sparse prefill attention over the paged cache (msa.md step 4), selection included.

A program owns BLOCK_M rows of one (query block, KV head): rows are (token, head) pairs of the block's tokens x the G
query heads of the group (GQA packing: they share one selection, so G = 3-8 fill a tile), and it runs flash-style
online softmax over the selected pages, causal inside the current block (always last in the ascending selection).
Varlen batches and chunked prefill against a cached prefix come from the query-block table of paged_ref. Tokens at
positions < dense_below attend densely (every earlier block; rows of a mixed block past dense_below keep to the
selection). Remapped positions (msa.md, remap.py): a query block i >= remap_from scores its remote pages (selected,
before the window) with q_remote against keys whose RoPE is undone in registers, one page at a time.
"""

import torch
import triton
import triton.language as tl

from m3.kernels.msa_select import LOG2E, _dot, prefill_select_rows
from m3.kernels.paged_ref import prefill_query_blocks
from m3.kernels.remap import Remap, remap_inputs, select_remapped


@triton.jit
def _attend(
    acc, m_i, l_i, q, k_ptrs, v_ptrs, qk_scale, mask, kv_mask,
    LOAD_MASK: tl.constexpr, SCORE_MASK: tl.constexpr, IS_FP32: tl.constexpr,
):  # fmt: skip
    """One tile of keys (N, D) of online softmax for the query tile: acc (M, D), m_i, l_i (M,) in the log2 domain."""
    if LOAD_MASK:
        # NOTE: keys past the sequence end are unwritten (possibly NaN): p = 0 is not enough, v must be zeroed too
        k = tl.load(k_ptrs, mask=kv_mask, other=0.0)
        v = tl.load(v_ptrs, mask=kv_mask, other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    s = _dot(q, tl.trans(k), IS_FP32)  # (M, N)
    if SCORE_MASK:
        s = tl.where(mask, s, float("-inf"))
    return _update(acc, m_i, l_i, s, v, qk_scale, IS_FP32)


@triton.jit
def _update(acc, m_i, l_i, s, v, qk_scale, IS_FP32: tl.constexpr):
    """Online softmax update of (acc, m_i, l_i) (log2 domain) with raw scores s (M, N) (-inf: masked), scaled by
    qk_scale > 0 inside the exponent (one FMA per score) and values v (N, D)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * qk_scale)
    alpha = tl.math.exp2(m_i - m_new)
    p = tl.math.exp2(s * qk_scale - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IS_FP32)
    return acc, m_new, l_i


@triton.jit
def remote_scores(qr1, qr2, k_ptrs, j, s_idx, PCOS, PSIN, OCOS, OSIN, HALF: tl.constexpr, IS_FP32: tl.constexpr):
    """Raw scores (M, S) of remapped queries, halves qr1 | qr2 (M, HALF), against the keys of full logical page j
    (k_ptrs: their first halves (S, HALF)) with RoPE undone at angles j*S + s (remap.py tables):
    unrope(y) = (y1 c + y2 s, y2 c - y1 s)."""
    e = tl.arange(0, HALF)
    y1 = tl.load(k_ptrs).to(tl.float32)
    y2 = tl.load(k_ptrs + HALF).to(tl.float32)
    pc = tl.load(PCOS + j * HALF + e)[None, :]
    ps = tl.load(PSIN + j * HALF + e)[None, :]
    oc = tl.load(OCOS + s_idx[:, None] * HALF + e[None, :])
    so = tl.load(OSIN + s_idx[:, None] * HALF + e[None, :])
    c = pc * oc - ps * so
    sn = ps * oc + pc * so
    x1 = (y1 * c + y2 * sn).to(qr1.dtype)
    x2 = (y2 * c - y1 * sn).to(qr1.dtype)
    return _dot(qr1, tl.trans(x1), IS_FP32) + _dot(qr2, tl.trans(x2), IS_FP32)


@triton.jit
def _prefill_kernel(
    Q, K_CACHE, V_CACHE, OUT, SEL, BT, QB_SEQ, QB_ID, CU_Q, Q_START, SEQ_LENS, QR, PCOS, PSIN, OCOS, OSIN,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_selq, stride_selh, stride_bt, stride_rt, stride_rh,
    dense_below, head_dim, qk_scale, remap_from,
    G: tl.constexpr, S: tl.constexpr, NUM_SEL: tl.constexpr, N_MTILES: tl.constexpr, PAGES: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_SEL: tl.constexpr, EVEN_D: tl.constexpr,
    IS_FP32: tl.constexpr, REMAP: tl.constexpr, WINDOW: tl.constexpr, IDS_IN_REGS: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    h = tl.program_id(1)
    w = pid // N_MTILES
    mt = pid % N_MTILES
    b = tl.load(QB_SEQ + w)
    if b < 0:
        return
    i = tl.load(QB_ID + w)
    q_start = tl.load(Q_START + b)
    seq_len = tl.load(SEQ_LENS + b)
    lo = tl.maximum(q_start, i * S)
    hi = tl.minimum(seq_len, i * S + S)
    num_rows = (hi - lo) * G
    if mt * BLOCK_M >= num_rows:
        return
    # -- the tile: rows r = token * G + g, token t at position lo + t, query head h * G + g --
    r = mt * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = r < num_rows
    t = r // G
    q_pos = lo + t
    tok = (tl.load(CU_Q + b) - q_start + q_pos).to(tl.int64)
    head = h * G + r % G
    d = tl.arange(0, BLOCK_D)
    dm = d < head_dim
    q = tl.load(
        Q + tok[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :],
        mask=row_ok[:, None] & dm[None, :],
        other=0.0,
    )
    s_idx = tl.arange(0, S)
    k_offs = s_idx[:, None] * stride_ks + h * stride_kh + d[None, :]  # one page (S, D)
    v_offs = s_idx[:, None] * stride_vs + h * stride_vh + d[None, :]
    bt_row = BT + b.to(tl.int64) * stride_bt
    sel_row = SEL + w.to(tl.int64) * stride_selq + h * stride_selh
    all_keys = s_idx >= 0
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    HALF: tl.constexpr = BLOCK_D // 2
    if REMAP:
        # -- remapped queries, as halves, and the half-key offsets of one page (remote scoring, head_dim even) --
        e = tl.arange(0, HALF)
        qr_ptr = QR + tok[:, None] * stride_rt + head[:, None] * stride_rh + e[None, :]
        qr1 = tl.load(qr_ptr, mask=row_ok[:, None], other=0.0)
        qr2 = tl.load(qr_ptr + HALF, mask=row_ok[:, None], other=0.0)
        kh_offs = s_idx[:, None] * stride_ks + h * stride_kh + e[None, :]
        is_remap = i >= remap_from
    if lo < dense_below:
        # -- dense rows: every block before the current one; MSA rows of a mixed block keep to the selection --
        is_dense = q_pos < dense_below
        ptr = i * 0
        for j in range(0, i):
            sj = tl.load(sel_row + ptr, mask=ptr < NUM_SEL, other=-1)
            hit = sj == j
            ptr += hit.to(tl.int32)
            phys = tl.load(bt_row + j).to(tl.int64)
            k_ptrs = K_CACHE + phys * stride_kb + k_offs
            v_ptrs = V_CACHE + phys * stride_vb + v_offs
            visible = (is_dense | hit)[:, None] & all_keys[None, :]
            if REMAP:
                if is_remap & (hi > dense_below) & (j < i - WINDOW):
                    # a remote page of the block's MSA rows: they score it remapped, the dense rows at true positions
                    k = tl.load(k_ptrs, mask=dm[None, :], other=0.0)
                    v = tl.load(v_ptrs, mask=dm[None, :], other=0.0)
                    s_true = _dot(q, tl.trans(k), IS_FP32)
                    s_far = remote_scores(qr1, qr2, K_CACHE + phys * stride_kb + kh_offs, j, s_idx, PCOS, PSIN, OCOS,
                                          OSIN, HALF, IS_FP32)  # fmt: skip
                    s = tl.where(is_dense[:, None], s_true, s_far)
                    acc, m_i, l_i = _update(acc, m_i, l_i, tl.where(visible, s, float("-inf")), v, qk_scale, IS_FP32)
                else:
                    acc, m_i, l_i = _attend(
                        acc, m_i, l_i, q, k_ptrs, v_ptrs, qk_scale, visible, dm[None, :], not EVEN_D, True, IS_FP32
                    )
            else:
                acc, m_i, l_i = _attend(
                    acc, m_i, l_i, q, k_ptrs, v_ptrs, qk_scale, visible, dm[None, :], not EVEN_D, True, IS_FP32
                )
    else:
        # -- selected pages before the current block: fully visible; remote ones of a remapped block first --
        sv = tl.load(sel_row + tl.arange(0, BLOCK_SEL), mask=tl.arange(0, BLOCK_SEL) < NUM_SEL, other=-1)
        num_full = tl.sum((sv >= 0).to(tl.int32), axis=0) - 1
        first = num_full * 0  # first page of the true-position loop
        if REMAP:
            if is_remap:
                # ascending ids: the pages before the window (and the current block) lead the row
                first = num_full + 1 - tl.sum(((sv >= 0) & (sv >= i - WINDOW)).to(tl.int32), axis=0)
                for it in range(0, first):
                    j = tl.load(sel_row + it)
                    phys = tl.load(bt_row + j).to(tl.int64)
                    s_far = remote_scores(qr1, qr2, K_CACHE + phys * stride_kb + kh_offs, j, s_idx, PCOS, PSIN, OCOS,
                                          OSIN, HALF, IS_FP32)  # fmt: skip
                    v = tl.load(V_CACHE + phys * stride_vb + v_offs)
                    acc, m_i, l_i = _update(acc, m_i, l_i, s_far, v, qk_scale, IS_FP32)
        # -- the rest at true positions, PAGES pages per step --
        n_true = num_full - first
        rows = tl.arange(0, PAGES * S)
        page = rows // S
        rk_offs = (rows % S)[:, None] * stride_ks + h * stride_kh + d[None, :]  # PAGES pages (PAGES * S, D)
        rv_offs = (rows % S)[:, None] * stride_vs + h * stride_vh + d[None, :]
        if IDS_IN_REGS:
            slot = tl.arange(0, BLOCK_SEL)
            pv = tl.load(bt_row + sv, mask=sv >= 0, other=0)  # the physical page of every listed block
        for it in range(0, n_true // PAGES):
            if IDS_IN_REGS:  # (one page per step)
                # NOTE: no load in the loop but the pages': with the index chain (list -> table -> page) the pipeliner
                # issued each page's loads one step ahead after a blocking index load, and waited for all of them at
                # the top of the next step (TTGIR); with ids from registers the pages load two steps ahead
                phys = tl.sum(tl.where(slot == first + it, pv, 0), axis=0).to(tl.int64)
                k_ptrs = K_CACHE + phys * stride_kb + k_offs
                v_ptrs = V_CACHE + phys * stride_vb + v_offs
            elif PAGES == 1:
                phys = tl.load(bt_row + tl.load(sel_row + first + it)).to(tl.int64)
                k_ptrs = K_CACHE + phys * stride_kb + k_offs
                v_ptrs = V_CACHE + phys * stride_vb + v_offs
            else:
                phys = tl.load(bt_row + tl.load(sel_row + first + it * PAGES + page)).to(tl.int64)  # (PAGES * S,)
                k_ptrs = K_CACHE + phys[:, None] * stride_kb + rk_offs
                v_ptrs = V_CACHE + phys[:, None] * stride_vb + rv_offs
            acc, m_i, l_i = _attend(
                acc, m_i, l_i, q, k_ptrs, v_ptrs, qk_scale, row_ok[:, None], dm[None, :], not EVEN_D, False, IS_FP32
            )
        if PAGES > 1:
            rem = n_true % PAGES
            if rem > 0:
                ok = page < rem
                jv = tl.load(sel_row + (num_full - rem) + page, mask=ok, other=0)
                phys = tl.load(bt_row + jv, mask=ok, other=0).to(tl.int64)
                acc, m_i, l_i = _attend(
                    acc, m_i, l_i, q, K_CACHE + phys[:, None] * stride_kb + rk_offs,
                    V_CACHE + phys[:, None] * stride_vb + rv_offs, qk_scale, ok[None, :], ok[:, None] & dm[None, :],
                    True, True, IS_FP32,
                )  # fmt: skip
    # -- the current block: token-causal --
    key_pos = i * S + s_idx
    phys = tl.load(bt_row + i).to(tl.int64)
    acc, m_i, l_i = _attend(
        acc, m_i, l_i, q, K_CACHE + phys * stride_kb + k_offs, V_CACHE + phys * stride_vb + v_offs, qk_scale,
        key_pos[None, :] <= q_pos[:, None], (key_pos < seq_len)[:, None] & dm[None, :], True, True, IS_FP32,
    )  # fmt: skip
    o = acc / l_i[:, None]
    o_ptr = OUT + tok[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
    tl.store(o_ptr, o.to(OUT.dtype.element_ty), mask=row_ok[:, None] & dm[None, :])


def prefill_config(group: int, block_size: int, head_dim: int) -> dict:
    """Tiles from the rows of a query block (S x G): 256-row tiles when a block fills them (each page is then loaded
    once per block: 15.6 vs 17.8 ms at 128K on the H200, kernels-tiles256 record), else 128 or 64 by padding."""
    rows = block_size * group
    if rows <= 64:
        block_m = max(16, triton.next_power_of_2(rows))
    else:
        sizes = (64, 128, 256) if head_dim <= 128 else (64, 128)
        # padded rows, with a premium on the less efficient 64-row tiles
        cost = {bm: triton.cdiv(rows, bm) * bm * (1.25 if bm == 64 else 1.0) for bm in sizes}
        block_m = min(cost, key=lambda bm: (cost[bm], -bm))
    if block_m == 256:
        # three stages: 15.2 vs 15.7 ms at 128K, 126 ms attention at 1M (kernels-s3-h200 tuning record); page ids
        # held in registers: 121.4-121.6 vs 123.1-124.7 ms at 1M in three A/B runs (kernel_ab records, session 6)
        return dict(BLOCK_M=256, PAGES=1, num_warps=16, num_stages=3, IDS_IN_REGS=True)
    if block_m == 128 and head_dim <= 128:
        # two pages per step, two stages: 10% faster than one page at 128K on the H200 (kernels-h200 tuning record)
        return dict(BLOCK_M=block_m, PAGES=2, num_warps=8, num_stages=2, IDS_IN_REGS=False)
    stages = 3 if head_dim <= 128 else 2
    return dict(BLOCK_M=block_m, PAGES=1, num_warps=8 if block_m >= 128 else 4, num_stages=stages, IDS_IN_REGS=False)


def prefill_sparse_rows(
    q, k_cache, v_cache, block_tables, cu_seqlens_q, q_start, seq_lens, sel, qb_seq, qb_ids, *,
    dense_below: int, remap: Remap | None = None, config: dict | None = None,
) -> torch.Tensor:  # fmt: skip
    """msa_prefill_sparse over a precomputed query-block table (qb_seq, qb_ids) from prefill_query_blocks."""
    num_tokens, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert num_heads == group * num_kv_heads and k_cache.shape == v_cache.shape and k_cache.shape[3] == head_dim
    assert q.dtype in (torch.float16, torch.bfloat16, torch.float32) and k_cache.dtype == v_cache.dtype == q.dtype
    assert q.stride(-1) == k_cache.stride(-1) == v_cache.stride(-1) == 1
    assert block_size >= 16 and block_size & (block_size - 1) == 0, "block_size must be a power of two >= 16"
    assert block_tables.dtype == torch.int32 and block_tables.stride(-1) == 1
    assert cu_seqlens_q.dtype == q_start.dtype == seq_lens.dtype == torch.int32
    assert sel.shape[:2] == (qb_seq.shape[0], num_kv_heads) and sel.dtype == torch.int32 and sel.stride(-1) == 1
    o = torch.empty_like(q)
    if num_tokens == 0:
        return o
    cfg = {**prefill_config(group, block_size, head_dim), **(config or {})}
    assert not (cfg["IDS_IN_REGS"] and cfg["PAGES"] > 1), "page ids in registers take one page per step"
    n_mtiles = triton.cdiv(block_size * group, cfg["BLOCK_M"])
    grid = (qb_seq.shape[0] * n_mtiles, num_kv_heads)
    qr, tables, remap_from, window = remap_inputs(remap, q, block_size)
    _prefill_kernel[grid](
        q, k_cache, v_cache, o, sel, block_tables, qb_seq, qb_ids, cu_seqlens_q, q_start, seq_lens, qr, *tables,
        q.stride(0), q.stride(1), o.stride(0), o.stride(1),
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        sel.stride(0), sel.stride(1), block_tables.stride(0), qr.stride(0), qr.stride(1),
        dense_below, head_dim, LOG2E / head_dim**0.5, remap_from,
        G=group, S=block_size, NUM_SEL=sel.shape[2], N_MTILES=n_mtiles,
        BLOCK_D=triton.next_power_of_2(head_dim), BLOCK_SEL=triton.next_power_of_2(sel.shape[2]),
        EVEN_D=triton.next_power_of_2(head_dim) == head_dim, IS_FP32=q.dtype == torch.float32,
        REMAP=remap is not None, WINDOW=window, **cfg,
    )  # fmt: skip
    return o


def msa_prefill_sparse(
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
    """Attention of a prefill step given its selection (twin of paged_ref.msa_prefill_sparse_ref).

    q: (T, H, D); k_cache, v_cache: (NB, S, Hkv, D) holding this step's keys already; sel: (Qmax, Hkv, K) int32 from
    msa_prefill_select. Returns o (T, H, D) in q's dtype.
    """
    qb_seq, qb_ids = prefill_query_blocks(q.shape[0], q_start, seq_lens, k_cache.shape[1])
    return prefill_sparse_rows(
        q, k_cache, v_cache, block_tables, cu_seqlens_q, q_start, seq_lens, sel, qb_seq, qb_ids,
        dense_below=dense_below, remap=remap,
    )  # fmt: skip


def msa_prefill_attention(
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
    """MSA prefill of a batch over the paged cache: selection, then block-sparse attention.

    q: (T, H, D) post-RoPE queries of B sequences (cu_seqlens_q (B+1,), q_start, seq_lens (B,) int32: positions
    q_start..seq_len-1); k_cache, v_cache: (NB, S, Hkv, D) with this step's rows stored and its full blocks
    summarised in kmean/kmin/kmax (NB, Hkv, D); block_tables (B, max_blocks) int32.
    remap: remapped positions (remap.py) for query blocks >= remap.from_block; None = true positions.
    Returns o (T, H, D), or (o, sel (Qmax, Hkv, K) int32) with return_sel.
    """
    assert k_cache.shape[1] == block_size
    qb_seq, qb_ids = prefill_query_blocks(q.shape[0], q_start, seq_lens, block_size)
    knobs = dict(block_size=block_size, sink_blocks=sink_blocks, window_blocks=window_blocks, topk_blocks=topk_blocks,
                 score=score, dense_below=dense_below)  # fmt: skip
    sel = select_remapped(
        lambda qq, *sums: prefill_select_rows(
            qq, *sums, block_tables, cu_seqlens_q, q_start, seq_lens, qb_seq, qb_ids, **knobs
        ),
        q, (kmean, kmin, kmax), qb_ids, remap,
    )  # fmt: skip
    o = prefill_sparse_rows(
        q, k_cache, v_cache, block_tables, cu_seqlens_q, q_start, seq_lens, sel, qb_seq, qb_ids,
        dense_below=dense_below, remap=remap,
    )  # fmt: skip
    return (o, sel) if return_sel else o
