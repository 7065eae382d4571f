"""Triton MSA sparse decode: B sequences of different lengths, one query token each (msa.md "Decode").

Three launches, each parallel over splits so one long sequence still fills the GPU: (1) block logits of each
candidate split + per-split softmax partials; (2) per split, group-summed probabilities and a bitonic top-k
(tl.topk); the last split of a (sequence, KV head) to finish merges the split top-ks and writes the page list
(B, Hkv, KD); (3) split-KV attention over only the listed pages; the last split to finish combines the partials.
"Last to finish" is an atomic counter per (sequence, KV head), reset by that program. Every buffer has a size fixed
by shapes (B, max_blocks, knobs) and nothing syncs with the host, so a decode step can be captured in a CUDA graph;
rows with seq_len <= 0 are padding (output zeros).
Remapped positions (remap.py): a sequence whose query block is >= remap_from selects with q_remote against the raw
summaries and scores its remote pages with q_remote against keys whose RoPE is undone in registers.
"""

import torch
import triton
import triton.language as tl

from m3.kernels.msa_prefill import _update
from m3.kernels.msa_select import (
    LOG2E,
    _check_summaries,
    _dot,
    _low_ids,
    _num_sms,
    _pack_keys,
    _scoring_queries,
    _summary_logits,
    selection_keys,
)
from m3.kernels.paged_ref import num_decode_pages, num_selected
from m3.kernels.remap import Remap, remap_inputs, select_remapped

_SCORE_SPLIT = 256  # candidate blocks scored per program (the summary read is the decode floor: spread it wide)
_TOPK_SPLIT = 1024  # candidate blocks per local top-k (fewer splits = a smaller final merge)
_COMBINE_ELEMS = 16384  # split partials combined per load: BLOCK_C x G x D elements
_SCORE_BLOCK_N = 64  # candidate blocks per step of the scoring loop (two pipeline stages: 20.4 vs 21.3 us at 1M);
# twice that for float8 min/max (the same bytes per step: scoring at 1M x 1 13.0 vs 14.6 us, session 8)
_SCORE_STAGES, _SCORE_WARPS = 2, 4  # launch options of the scoring kernel
_TOPK_WARPS = 8  # top-k kernel warps for 1024-candidate splits (4 below)
_TOPK_KEYS32 = True  # top-k on 32-bit keys for 16-bit queries (msa_select.selection_keys, as the prefill selection)
_ATTN_CHUNK, _ATTN_STAGES = 2, 2  # attention: pages per step (2 x S keys per load), pipeline stages
_KEEP: list[torch.Tensor] = []  # every counter buffer ever handed out (captured graphs keep their pointers)


def _counters(device: torch.device, n: int) -> torch.Tensor:
    """n zeroed int32 counters for the last-program-finishes pattern (_is_last). Every launch leaves them zero again,
    so one buffer per device serves every launch and every CUDA graph, with no memset per step."""
    buf = next((t for t in reversed(_KEEP) if t.device == device and t.numel() >= n), None)
    if buf is None:
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _KEEP.append(buf)
    return buf


@triton.jit
def _decode_scores_kernel(
    Q, KMEAN, KMIN, KMAX, BT, SEQ_LENS, SC, PM, PL,
    stride_qb, stride_qh, stride_sb, stride_sh, stride_bt, stride_scb, stride_sch, stride_scg,
    dense_below, head_dim, qk_scale,
    G: tl.constexpr, S: tl.constexpr, SINK: tl.constexpr, WINDOW: tl.constexpr, SCORE_SPLIT: tl.constexpr,
    NUM_SCORE_SPLITS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    IS_BOUND: tl.constexpr, IS_FP32: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    c = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b)
    is_msa = (seq_len > 0) & (seq_len - 1 >= dense_below)
    i = tl.maximum(seq_len - 1, 0) // S
    lo = SINK + c * SCORE_SPLIT
    end = tl.minimum(i - WINDOW, lo + SCORE_SPLIT)
    end = tl.where(is_msa, end, lo)
    g = tl.arange(0, BLOCK_G)
    gm = g < G
    d = tl.arange(0, BLOCK_D)
    dm = d < head_dim
    q = tl.load(
        Q + b.to(tl.int64) * stride_qb + (h * G + g)[:, None] * stride_qh + d[None, :],
        mask=gm[:, None] & dm[None, :],
        other=0.0,
    ).to(tl.float32)
    qa, qb = _scoring_queries(q, KMEAN, KMIN, KMAX, IS_BOUND)
    bt_row = BT + b.to(tl.int64) * stride_bt
    sc_row = SC + b.to(tl.int64) * stride_scb + h * stride_sch + g[:, None] * stride_scg
    m = tl.full([BLOCK_G], -1.0e30, tl.float32)
    l_sum = tl.zeros([BLOCK_G], tl.float32)
    for j0 in range(lo, end, BLOCK_N):
        j = j0 + tl.arange(0, BLOCK_N)
        jm = j < end
        phys = tl.load(bt_row + j, mask=jm, other=0)
        s = _summary_logits(qa, qb, KMEAN, KMIN, KMAX, phys, jm, h, d, dm, stride_sb, stride_sh, IS_BOUND, IS_FP32)
        s = tl.where(jm[None, :], s * qk_scale, float("-inf"))
        tl.store(sc_row + j[None, :], s, mask=gm[:, None] & jm[None, :])
        # -- this split's softmax partials per head --
        m_new = tl.maximum(m, tl.max(s, axis=1))
        l_sum = l_sum * tl.math.exp2(m - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), axis=1)
        m = m_new
    part = ((b * tl.num_programs(1) + h) * NUM_SCORE_SPLITS + c) * BLOCK_G + g
    tl.store(PM + part, m)
    tl.store(PL + part, l_sum)


@triton.jit
def _is_last(CNT, idx, n):
    """True in the last of the n programs that arrive at counter idx (it resets the counter for the next launch): the
    stores every program made before arriving are then visible to it (read them with cache_modifier=".cg")."""
    tl.debug_barrier()  # all threads' stores are issued before the releasing atomic
    last = tl.atomic_add(CNT + idx, 1, sem="acq_rel") == n - 1
    tl.atomic_xchg(CNT + idx, 0, mask=last)
    tl.debug_barrier()
    return last


@triton.jit
def _store_pages(
    top, seq_len, row, dense_below,
    S: tl.constexpr, SINK: tl.constexpr, WINDOW: tl.constexpr, TOPK: tl.constexpr, NUM_PAGES: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_SEL: tl.constexpr, id_bits=0, KEYS32: tl.constexpr = False,
):  # fmt: skip
    """Write one page list: sinks, the chosen blocks (keys `top`, best first, -1 = none) ascending, window, current
    block; every block up to the current one for a dense sequence; -1 for padding rows and past the end."""
    is_active = seq_len > 0
    is_msa = is_active & (seq_len - 1 >= dense_below)
    i = tl.maximum(seq_len - 1, 0) // S
    # -- dense rows, padding rows and the tail of MSA rows, 1024 entries at a time (a dense list can be long) --
    for p0 in range(0, NUM_PAGES, 1024):
        pos = p0 + tl.arange(0, 1024)
        fill = tl.where(is_active & (pos <= i), pos, -1)
        tl.store(row + pos, fill, mask=(pos < NUM_PAGES) & tl.where(is_msa, pos >= BLOCK_SEL, pos >= 0))
    # -- MSA rows: the first BLOCK_SEL entries --
    kk = tl.arange(0, BLOCK_K)
    chosen = (kk < TOPK) & (top >= 0) & is_msa
    ids = tl.sort(tl.where(chosen, _low_ids(top, id_bits, KEYS32), 2147483647))
    n_ch = tl.sum(chosen.to(tl.int32), axis=0)
    n_sink = tl.minimum(i, SINK)
    w_lo = tl.maximum(i - WINDOW, SINK)
    n_win = tl.maximum(i - w_lo, 0)
    a = n_sink + n_ch
    pos = tl.arange(0, BLOCK_SEL)
    msa = tl.where(pos < n_sink, pos, tl.where(pos < a + n_win, w_lo + pos - a, tl.where(pos == a + n_win, i, -1)))
    in_chosen = (pos >= n_sink) & (pos < a)
    # NOTE: tl.where, not `scalar & vector`: the interpreter rejects masks broadcast from a scalar
    tl.store(row + pos, msa, mask=tl.where(is_msa, (pos < NUM_PAGES) & ~in_chosen, False))
    tl.store(row + n_sink + kk, ids, mask=tl.where(is_msa, kk < n_ch, False))


@triton.jit(do_not_specialize=["id_bits"])  # (one variant for every block-table width)
def _decode_topk_kernel(
    SC, PM, PL, SEQ_LENS, TK, CNT, PAGES,
    stride_scb, stride_sch, stride_scg, stride_pb, stride_ph,
    dense_below, id_bits,
    G: tl.constexpr, S: tl.constexpr, SINK: tl.constexpr, WINDOW: tl.constexpr, TOPK: tl.constexpr,
    NUM_PAGES: tl.constexpr, TOPK_SPLIT: tl.constexpr, NUM_SCORE_SPLITS: tl.constexpr,
    NUM_TOPK_SPLITS: tl.constexpr, BLOCK_SCORE_SPLITS: tl.constexpr, BLOCK_TOPK_SPLITS: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_GP: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_SEL: tl.constexpr,
    KEYS32: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    c = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b)
    is_msa = (seq_len > 0) & (seq_len - 1 >= dense_below)
    i = tl.maximum(seq_len - 1, 0) // S
    lo = SINK + c * TOPK_SPLIT
    end = tl.where(is_msa, tl.minimum(i - WINDOW, lo + TOPK_SPLIT), lo)
    bh = b * tl.num_programs(1) + h
    # -- each head's log-sum-exp over all candidates, from the score-split partials --
    cs = tl.arange(0, BLOCK_SCORE_SPLITS)
    g = tl.arange(0, BLOCK_G)
    part = (bh * NUM_SCORE_SPLITS + cs[:, None]) * BLOCK_G + g[None, :]
    pm = tl.load(PM + part, mask=cs[:, None] < NUM_SCORE_SPLITS, other=-1.0e30)
    pl = tl.load(PL + part, mask=cs[:, None] < NUM_SCORE_SPLITS, other=0.0)
    mg = tl.max(pm, axis=0)
    lse = mg + tl.math.log2(tl.sum(pl * tl.math.exp2(pm - mg[None, :]), axis=0))  # (BLOCK_G,)
    # rows of the score buffer are the G real heads (padded to BLOCK_GP), not the BLOCK_G rows of the dot
    lse = tl.sum(tl.where(g[None, :] == tl.arange(0, BLOCK_GP)[:, None], lse[None, :], 0.0), axis=1)  # (BLOCK_GP,)
    # -- this split's candidates: probabilities summed over the group, best BLOCK_K kept (bitonic top-k) --
    gp = tl.arange(0, BLOCK_GP)
    jj = lo + tl.arange(0, TOPK_SPLIT)
    jm = jj < end
    valid = (gp < G)[:, None] & jm[None, :]
    sc_row = SC + b.to(tl.int64) * stride_scb + h * stride_sch + gp[:, None] * stride_scg
    s = tl.load(sc_row + jj[None, :], mask=valid, other=float("-inf"))
    p = tl.where(valid, tl.math.exp2(s - lse[:, None]), 0.0)
    top = tl.topk(_pack_keys(tl.sum(p, axis=0), jj, jm, id_bits, KEYS32), BLOCK_K)  # best first
    row = PAGES + b.to(tl.int64) * stride_pb + h * stride_ph
    if NUM_TOPK_SPLITS == 1:
        _store_pages(top, seq_len, row, dense_below, S, SINK, WINDOW, TOPK, NUM_PAGES, BLOCK_K, BLOCK_SEL, id_bits,
                     KEYS32)  # fmt: skip
    else:
        # -- the last split of (b, h) to finish merges every split's best into the page list --
        kk = tl.arange(0, BLOCK_K)
        tl.store(TK + (bh * NUM_TOPK_SPLITS + c) * BLOCK_K + kk, top)
        if _is_last(CNT, bh, NUM_TOPK_SPLITS):
            ct = tl.arange(0, BLOCK_TOPK_SPLITS)
            keys = tl.load(TK + (bh * NUM_TOPK_SPLITS + ct[:, None]) * BLOCK_K + kk[None, :],
                           mask=ct[:, None] < NUM_TOPK_SPLITS, other=-1, cache_modifier=".cg")  # fmt: skip
            top = tl.topk(tl.reshape(keys, [BLOCK_TOPK_SPLITS * BLOCK_K]), BLOCK_K)
            _store_pages(top, seq_len, row, dense_below, S, SINK, WINDOW, TOPK, NUM_PAGES, BLOCK_K, BLOCK_SEL, id_bits,
                         KEYS32)  # fmt: skip


@triton.jit
def _decode_pages_kernel(
    SEQ_LENS, PAGES,
    stride_pb, stride_ph,
    dense_below,
    S: tl.constexpr, SINK: tl.constexpr, WINDOW: tl.constexpr, NUM_PAGES: tl.constexpr, BLOCK_SEL: tl.constexpr,
):  # fmt: skip
    """Page lists without chosen blocks (topk_blocks == 0)."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    row = PAGES + b.to(tl.int64) * stride_pb + h * stride_ph
    none = tl.full([16], -1, tl.int64)
    _store_pages(none, tl.load(SEQ_LENS + b), row, dense_below, S, SINK, WINDOW, 0, NUM_PAGES, 16, BLOCK_SEL)


@triton.jit
def _remote_rows(qr1, qr2, k1_ptrs, j, s_r, PCOS, PSIN, OCOS, OSIN, HALF: tl.constexpr, IS_FP32: tl.constexpr):
    """remote_scores (msa_prefill.py) for rows from several pages: row r is key s_r[r] of logical page j[r]; k1_ptrs
    (R, HALF) point at the first halves of the rows' keys."""
    e = tl.arange(0, HALF)
    y1 = tl.load(k1_ptrs).to(tl.float32)
    y2 = tl.load(k1_ptrs + HALF).to(tl.float32)
    jj = tl.maximum(j, 0)[:, None] * HALF + e[None, :]
    pc = tl.load(PCOS + jj)
    ps = tl.load(PSIN + jj)
    oc = tl.load(OCOS + s_r[:, None] * HALF + e[None, :])
    so = tl.load(OSIN + s_r[:, None] * HALF + e[None, :])
    c = pc * oc - ps * so
    sn = ps * oc + pc * so
    x1 = (y1 * c + y2 * sn).to(qr1.dtype)
    x2 = (y2 * c - y1 * sn).to(qr1.dtype)
    return _dot(qr1, tl.trans(x1), IS_FP32) + _dot(qr2, tl.trans(x2), IS_FP32)


@triton.jit
def _known_pages(pidx, n_sink, w_lo, n_win, i, is_msa):
    """Logical pages at positions pidx of the part of a page list that needs no selection: sinks, window, current
    block (an MSA row, as _store_pages orders them) or blocks 0..i (a dense row)."""
    msa = tl.where(pidx < n_sink, pidx, tl.where(pidx < n_sink + n_win, w_lo + pidx - n_sink, i))
    return tl.where(is_msa, msa, pidx)


@triton.jit
def _attend_rows(
    acc, m_i, l_i, q, qr1, qr2, j, s_r, d, dm, K_CACHE, V_CACHE, bt_row, h, seq_len, i, qk_scale, is_remap,
    PCOS, PSIN, OCOS, OSIN, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    S: tl.constexpr, HALF: tl.constexpr, IS_FP32: tl.constexpr, REMAP: tl.constexpr, WINDOW: tl.constexpr,
):  # fmt: skip
    """Online softmax of the query rows over key rows: row r is key s_r[r] of logical page j[r] (-1: none)."""
    phys = tl.load(bt_row + tl.maximum(j, 0)).to(tl.int64)
    # NOTE: the current page is partial: keys past seq_len are unwritten (possibly NaN), so zero them
    kv_ok = (j >= 0) & (j * S + s_r < seq_len)
    mask = kv_ok[:, None] & dm[None, :]
    k_ptrs = K_CACHE + phys[:, None] * stride_kb + s_r[:, None] * stride_ks + h * stride_kh
    v = tl.load(V_CACHE + phys[:, None] * stride_vb + s_r[:, None] * stride_vs + h * stride_vh + d[None, :],
                mask=mask, other=0.0)  # fmt: skip
    s = _dot(q, tl.trans(tl.load(k_ptrs + d[None, :], mask=mask, other=0.0)), IS_FP32)
    if REMAP:
        # remote pages (full, before the window): remapped query against keys with RoPE undone
        # NOTE: computing only the scores a step needs (remote pages come first) nests ifs that Triton 3.6 fails
        # to compile (PassManager::run failed on the H200); both are computed where a row remaps
        if is_remap:
            e = tl.arange(0, HALF)
            remote = (j >= 0) & (j < i - WINDOW)
            far = _remote_rows(qr1, qr2, k_ptrs + e[None, :], j, s_r, PCOS, PSIN, OCOS, OSIN, HALF, IS_FP32)
            s = tl.where(remote[None, :], far, s)
    return _update(acc, m_i, l_i, tl.where(kv_ok[None, :], s, float("-inf")), v, qk_scale, IS_FP32)


@triton.jit
def _decode_attn_kernel(
    Q, K_CACHE, V_CACHE, BT, PAGES, SEQ_LENS, PO, PLSE, CNT, OUT, QR, PCOS, PSIN, OCOS, OSIN,
    stride_qb, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt, stride_pb, stride_ph, stride_ob, stride_oh, stride_rb, stride_rh,
    head_dim, qk_scale, remap_from, dense_below,
    G: tl.constexpr, S: tl.constexpr, NUM_PAGES: tl.constexpr, CHUNK: tl.constexpr,
    NUM_SPLITS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_GP: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, IS_FP32: tl.constexpr, REMAP: tl.constexpr, WINDOW: tl.constexpr,
    FORCED: tl.constexpr, SINK: tl.constexpr, SEL_WINDOW: tl.constexpr, TOPK: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    h = tl.program_id(1)
    c = tl.program_id(2)
    seq_len = tl.load(SEQ_LENS + b)
    i = tl.maximum(seq_len - 1, 0) // S
    row = PAGES + b.to(tl.int64) * stride_pb + h * stride_ph
    is_msa = (seq_len > 0) & (seq_len - 1 >= dense_below)
    # -- a row's work: n_known pages that need no selection, then n_listed read from the list (from list_at on).
    # FORCED (lists written by _store_pages): an MSA row's sinks, window and current block, and a dense row's 0..i,
    # follow from seq_len, so only the chosen blocks are read from the list (one dependent load fewer for the rest:
    # the kernel took 12.2 us at 1M x 1 on the H200, 13.2 when it read every page from the list, in the session-5 and
    # session-4 runs). Otherwise every page comes from the (packed) list: 0..i for a dense row, at most NUM_PAGES for
    # an MSA row. The row's CHUNK-page steps are divided evenly over the NUM_SPLITS programs --
    if FORCED:
        n_sink = tl.minimum(i, SINK)
        w_lo = tl.maximum(i - SEL_WINDOW, SINK)
        n_win = tl.maximum(i - w_lo, 0)
        n_known = tl.where(seq_len > 0, tl.where(is_msa, n_sink + n_win + 1, tl.minimum(i + 1, NUM_PAGES)), 0)
        n_listed = tl.where(is_msa, tl.minimum(TOPK, tl.maximum(i - SEL_WINDOW - SINK, 0)), 0)
        list_at = n_sink
    else:
        n_sink = i * 0
        w_lo = n_sink
        n_win = n_sink
        n_known = n_sink
        n_listed = tl.where(seq_len > 0, tl.where(is_msa, NUM_PAGES, i + 1), 0)
        n_listed = tl.minimum(n_listed, NUM_PAGES)
        list_at = n_sink
    n_kc = tl.cdiv(n_known, CHUNK)
    total = n_kc + tl.cdiv(n_listed, CHUNK)
    per = tl.cdiv(total, NUM_SPLITS)
    u0 = c * per
    u1 = tl.minimum(u0 + per, total)
    g = tl.arange(0, BLOCK_G)
    gm = g < G
    d = tl.arange(0, BLOCK_D)
    dm = d < head_dim
    q = tl.load(
        Q + b.to(tl.int64) * stride_qb + (h * G + g)[:, None] * stride_qh + d[None, :],
        mask=gm[:, None] & dm[None, :],
        other=0.0,
    )
    r = tl.arange(0, CHUNK * S)
    page_of = r // S
    s_r = r % S
    bt_row = BT + b.to(tl.int64) * stride_bt
    m_i = tl.full([BLOCK_G], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    HALF: tl.constexpr = BLOCK_D // 2
    qr1 = q  # (placeholders without REMAP)
    qr2 = q
    is_remap = is_msa & False
    if REMAP:
        e = tl.arange(0, HALF)
        qr_ptr = QR + b.to(tl.int64) * stride_rb + (h * G + g)[:, None] * stride_rh + e[None, :]
        qr1 = tl.load(qr_ptr, mask=gm[:, None], other=0.0)
        qr2 = tl.load(qr_ptr + HALF, mask=gm[:, None], other=0.0)
        is_remap = (i >= remap_from) & is_msa  # a dense row keeps true positions
    # -- pages known without the selection --
    for u in range(u0, tl.minimum(u1, n_kc)):
        pk = u * CHUNK + page_of
        j = tl.where(pk < n_known, _known_pages(pk, n_sink, w_lo, n_win, i, is_msa), -1)
        acc, m_i, l_i = _attend_rows(
            acc, m_i, l_i, q, qr1, qr2, j, s_r, d, dm, K_CACHE, V_CACHE, bt_row, h, seq_len, i, qk_scale, is_remap,
            PCOS, PSIN, OCOS, OSIN, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            S, HALF, IS_FP32, REMAP, WINDOW,
        )  # fmt: skip
    # -- pages from the list --
    for u in range(tl.maximum(u0, n_kc), u1):
        pl = (u - n_kc) * CHUNK + page_of
        j = tl.load(row + list_at + pl, mask=pl < n_listed, other=-1)
        acc, m_i, l_i = _attend_rows(
            acc, m_i, l_i, q, qr1, qr2, j, s_r, d, dm, K_CACHE, V_CACHE, bt_row, h, seq_len, i, qk_scale, is_remap,
            PCOS, PSIN, OCOS, OSIN, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
            S, HALF, IS_FP32, REMAP, WINDOW,
        )  # fmt: skip
    has = l_i > 0
    o = tl.where(has[:, None], acc / tl.where(has, l_i, 1.0)[:, None], 0.0)
    lse = tl.where(has, m_i + tl.math.log2(tl.where(has, l_i, 1.0)), float("-inf"))
    o_base = OUT + b.to(tl.int64) * stride_ob + h * G * stride_oh
    if NUM_SPLITS == 1:
        tl.store(
            o_base + g[:, None] * stride_oh + d[None, :], o.to(OUT.dtype.element_ty), mask=gm[:, None] & dm[None, :]
        )
    else:
        # -- partials of the G real rows; the last split of (b, h) to finish combines them --
        bh = b * tl.num_programs(1) + h
        part = bh * NUM_SPLITS + c
        tl.store(PO + (part * BLOCK_GP + g)[:, None] * BLOCK_D + d[None, :], o, mask=gm[:, None])
        tl.store(PLSE + part * BLOCK_GP + g, lse, mask=gm)
        if _is_last(CNT, bh, NUM_SPLITS):
            _combine(PO, PLSE, o_base, bh, stride_oh, head_dim, G, NUM_SPLITS, BLOCK_GP, BLOCK_D, BLOCK_C)


@triton.jit
def _combine(
    PO, PLSE, o_base, bh, stride_oh, head_dim,
    G: tl.constexpr, NUM_SPLITS: tl.constexpr, BLOCK_GP: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """o = sum_c exp(lse_c - lse) o_c over the split partials of (b, h), BLOCK_C splits per load."""
    g = tl.arange(0, BLOCK_GP)
    d = tl.arange(0, BLOCK_D)
    cc = tl.arange(0, BLOCK_C)
    m = tl.full([BLOCK_GP], -1.0e30, tl.float32)
    den = tl.zeros([BLOCK_GP], tl.float32)
    acc = tl.zeros([BLOCK_GP, BLOCK_D], tl.float32)
    for c0 in range(0, NUM_SPLITS, BLOCK_C):
        part = bh * NUM_SPLITS + c0 + cc  # (BLOCK_C,)
        ok = ((c0 + cc) < NUM_SPLITS)[:, None] & (g < G)[None, :]
        lse = tl.load(PLSE + part[:, None] * BLOCK_GP + g[None, :], mask=ok, other=float("-inf"),
                      cache_modifier=".cg")  # fmt: skip
        po = tl.load(PO + (part[:, None, None] * BLOCK_GP + g[None, :, None]) * BLOCK_D + d[None, None, :],
                     mask=ok[:, :, None], other=0.0, cache_modifier=".cg")  # fmt: skip
        m_new = tl.maximum(m, tl.max(lse, axis=0))
        alpha = tl.math.exp2(m - m_new)
        wgt = tl.math.exp2(lse - m_new[None, :])  # (BLOCK_C, BLOCK_GP); 0 for empty splits
        den = den * alpha + tl.sum(wgt, axis=0)
        acc = acc * alpha[:, None] + tl.sum(wgt[:, :, None] * po, axis=0)
        m = m_new
    o = tl.where((den > 0)[:, None], acc / tl.where(den > 0, den, 1.0)[:, None], 0.0)
    o_ptr = o_base + g[:, None] * stride_oh + d[None, :]
    tl.store(o_ptr, o.to(o_base.dtype.element_ty), mask=(g < G)[:, None] & (d < head_dim)[None, :])


def msa_decode_select(
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
    """Page list of one decode step (twin of paged_ref.msa_decode_select_ref).

    q: (B, H, D) post-RoPE; kmean/kmin/kmax (NB, Hkv, D); block_tables (B, max_blocks) int32; seq_lens (B,) int32
    including the new token. Returns pages (B, Hkv, KD) int32, KD = paged_ref.num_decode_pages(...).
    """
    knobs = dict(block_size=block_size, sink_blocks=sink_blocks, window_blocks=window_blocks, topk_blocks=topk_blocks,
                 score=score, dense_below=dense_below)  # fmt: skip
    if remap is None:  # (no query-block arithmetic: two elementwise launches per step)
        return _decode_select(q, kmean, kmin, kmax, block_tables, seq_lens, **knobs)
    query_blocks = torch.div(seq_lens - 1, block_size, rounding_mode="floor")
    return select_remapped(
        lambda qq, *sums: _decode_select(qq, *sums, block_tables, seq_lens, **knobs),
        q, (kmean, kmin, kmax), query_blocks, remap,
    )  # fmt: skip


def _decode_select(q, kmean, kmin, kmax, block_tables, seq_lens, *, block_size, sink_blocks, window_blocks,
                   topk_blocks, score, dense_below) -> torch.Tensor:  # fmt: skip
    num_seqs, num_heads, head_dim = q.shape
    num_kv_heads = kmean.shape[1]
    group = num_heads // num_kv_heads
    kmin, kmax = _check_summaries(kmean, kmin, kmax, score)
    assert num_heads == group * num_kv_heads and kmean.shape[2] == head_dim and q.stride(-1) == 1
    assert q.dtype in (torch.float16, torch.bfloat16, torch.float32) and kmean.dtype == q.dtype
    assert block_tables.dtype == seq_lens.dtype == torch.int32 and block_tables.stride(-1) == 1
    max_blocks = block_tables.shape[1]
    num_pages = num_decode_pages(block_size, sink_blocks, window_blocks, topk_blocks, dense_below, max_blocks)
    pages = torch.empty(num_seqs, num_kv_heads, num_pages, dtype=torch.int32, device=q.device)
    if num_seqs == 0:
        return pages
    block_g = max(16, triton.next_power_of_2(group))  # rows of the scoring dot: at least 16
    block_k = triton.next_power_of_2(max(topk_blocks, 1))
    num_cand = max(max_blocks - sink_blocks, 1)  # upper bound on candidates of any sequence
    score_split, topk_split = _SCORE_SPLIT, max(_TOPK_SPLIT, block_k)
    num_score_splits = triton.cdiv(num_cand, score_split)
    num_topk_splits = triton.cdiv(num_cand, topk_split)
    block_sel = triton.next_power_of_2(num_selected(sink_blocks, window_blocks, topk_blocks))
    if topk_blocks == 0:
        _decode_pages_kernel[(num_seqs, num_kv_heads)](
            seq_lens, pages, pages.stride(0), pages.stride(1), dense_below,
            S=block_size, SINK=sink_blocks, WINDOW=window_blocks, NUM_PAGES=num_pages, BLOCK_SEL=block_sel,
        )  # fmt: skip
        return pages
    id_bits, keys32 = selection_keys(q.dtype, max_blocks)
    keys32 = keys32 and _TOPK_KEYS32
    keys = torch.empty(num_seqs, num_kv_heads, num_topk_splits, block_k, dtype=torch.int32 if keys32 else torch.int64,
                       device=q.device)  # fmt: skip
    counters = _counters(q.device, num_seqs * num_kv_heads)
    scores = torch.empty(num_seqs, num_kv_heads, group, max_blocks, dtype=torch.float32, device=q.device)
    block_n = _SCORE_BLOCK_N * (2 if kmin.element_size() == 1 else 1)
    part_m = torch.empty(num_seqs, num_kv_heads, num_score_splits, block_g, dtype=torch.float32, device=q.device)
    part_l = torch.empty_like(part_m)
    common = dict(G=group, S=block_size, SINK=sink_blocks, WINDOW=window_blocks, BLOCK_G=block_g)
    _decode_scores_kernel[(num_seqs, num_kv_heads, num_score_splits)](
        q, kmean, kmin, kmax, block_tables, seq_lens, scores, part_m, part_l,
        q.stride(0), q.stride(1), kmean.stride(0), kmean.stride(1), block_tables.stride(0),
        *scores.stride()[:3],
        dense_below, head_dim, LOG2E / head_dim**0.5,
        SCORE_SPLIT=score_split, NUM_SCORE_SPLITS=num_score_splits, BLOCK_N=min(block_n, score_split),
        BLOCK_D=triton.next_power_of_2(head_dim), IS_BOUND=score == "bound", IS_FP32=q.dtype == torch.float32,
        num_stages=_SCORE_STAGES, num_warps=_SCORE_WARPS, **common,
    )  # fmt: skip
    _decode_topk_kernel[(num_seqs, num_kv_heads, num_topk_splits)](
        scores, part_m, part_l, seq_lens, keys, counters, pages,
        *scores.stride()[:3], pages.stride(0), pages.stride(1),
        dense_below, id_bits,
        TOPK=topk_blocks, NUM_PAGES=num_pages, TOPK_SPLIT=topk_split, NUM_SCORE_SPLITS=num_score_splits,
        NUM_TOPK_SPLITS=num_topk_splits, BLOCK_SCORE_SPLITS=triton.next_power_of_2(num_score_splits),
        BLOCK_TOPK_SPLITS=triton.next_power_of_2(num_topk_splits), BLOCK_GP=triton.next_power_of_2(group),
        BLOCK_K=block_k, BLOCK_SEL=block_sel, num_warps=_TOPK_WARPS if topk_split >= 1024 else 4,
        KEYS32=keys32, **common,
    )  # fmt: skip
    return pages


def decode_splits(num_seqs: int, num_kv_heads: int, num_pages: int, device: torch.device) -> tuple[int, int]:
    """(pages per split, splits) so that B x Hkv x splits programs cover the GPU about twice."""
    per_seq = max(1, min(num_pages, triton.cdiv(2 * _num_sms(device), max(num_seqs * num_kv_heads, 1))))
    pages_per_split = triton.cdiv(num_pages, per_seq)
    return pages_per_split, triton.cdiv(num_pages, pages_per_split)


def msa_decode_sparse(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    pages: torch.Tensor,
    *,
    dense_below: int = 0,
    remap: Remap | None = None,
    forced: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """Split-KV paged attention of one query token per sequence over its page list (twin of
    paged_ref.msa_decode_sparse_ref). q (B, H, D), pages (B, Hkv, KD) int32 -> o (B, H, D); zeros where seq_len <= 0.
    Lists are packed (-1 after the last page): a dense row lists blocks 0..i, an MSA row at most KD entries.
    forced=(sink_blocks, window_blocks, topk_blocks) (internal, lists from _decode_select): the pages that need no
    selection are derived from seq_lens; only the chosen blocks are read from the list."""
    num_seqs, num_heads, head_dim = q.shape
    num_blocks, block_size, num_kv_heads, _ = k_cache.shape
    group = num_heads // num_kv_heads
    assert num_heads == group * num_kv_heads and k_cache.shape == v_cache.shape and k_cache.shape[3] == head_dim
    assert q.dtype in (torch.float16, torch.bfloat16, torch.float32) and k_cache.dtype == v_cache.dtype == q.dtype
    assert q.stride(-1) == k_cache.stride(-1) == v_cache.stride(-1) == 1
    assert block_size >= 16 and block_size & (block_size - 1) == 0, "block_size must be a power of two >= 16"
    assert block_tables.dtype == seq_lens.dtype == pages.dtype == torch.int32
    assert pages.shape[:2] == (num_seqs, num_kv_heads) and pages.stride(-1) == 1
    o = torch.empty_like(q)
    if num_seqs == 0:
        return o
    num_pages = pages.shape[2]
    chunk = _ATTN_CHUNK
    num_splits = decode_splits(num_seqs, num_kv_heads, triton.cdiv(num_pages, chunk), q.device)[1]
    block_g = max(16, triton.next_power_of_2(group))  # rows of the dot: at least 16
    block_gp = triton.next_power_of_2(group)
    block_d = triton.next_power_of_2(head_dim)
    part_o = torch.empty(num_seqs, num_kv_heads, num_splits, block_gp, block_d, dtype=torch.float32, device=q.device)
    part_lse = torch.empty(num_seqs, num_kv_heads, num_splits, block_gp, dtype=torch.float32, device=q.device)
    counters = _counters(q.device, num_seqs * num_kv_heads)
    qr, tables, remap_from, window = remap_inputs(remap, q, block_size)
    sink, sel_window, topk = forced or (0, 0, 0)
    _decode_attn_kernel[(num_seqs, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, pages, seq_lens, part_o, part_lse, counters, o, qr, *tables,
        q.stride(0), q.stride(1), *k_cache.stride()[:3], *v_cache.stride()[:3],
        block_tables.stride(0), pages.stride(0), pages.stride(1), o.stride(0), o.stride(1), qr.stride(0),
        qr.stride(1),
        head_dim, LOG2E / head_dim**0.5, remap_from, dense_below,
        G=group, S=block_size, NUM_PAGES=num_pages, CHUNK=chunk, NUM_SPLITS=num_splits,
        BLOCK_G=block_g, BLOCK_GP=block_gp, BLOCK_D=block_d,
        BLOCK_C=max(1, min(triton.next_power_of_2(num_splits), _COMBINE_ELEMS // (block_gp * block_d))),
        IS_FP32=q.dtype == torch.float32, REMAP=remap is not None, WINDOW=window,
        FORCED=forced is not None, SINK=sink, SEL_WINDOW=sel_window, TOPK=topk, num_warps=4, num_stages=_ATTN_STAGES,
    )  # fmt: skip
    return o


def msa_decode_attention(
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
    """MSA decode of B sequences, one query token each at position seq_len - 1 (its K/V already stored).

    q: (B, H, D) post-RoPE; k_cache, v_cache (NB, S, Hkv, D); kmean/kmin/kmax (NB, Hkv, D); block_tables
    (B, max_blocks) int32; seq_lens (B,) int32, <= 0 marks a padding row. Returns o (B, H, D), or
    (o, pages (B, Hkv, KD) int32) with return_sel. No host sync: CUDA-graph capturable for fixed B and max_blocks.
    remap: remapped positions (remap.py) for sequences whose query block is >= remap.from_block.
    """
    assert k_cache.shape[1] == block_size
    pages = msa_decode_select(
        q, kmean, kmin, kmax, block_tables, seq_lens, block_size=block_size, sink_blocks=sink_blocks,
        window_blocks=window_blocks, topk_blocks=topk_blocks, score=score, dense_below=dense_below, remap=remap,
    )  # fmt: skip
    o = msa_decode_sparse(q, k_cache, v_cache, block_tables, seq_lens, pages, dense_below=dense_below, remap=remap,
                          forced=(sink_blocks, window_blocks, topk_blocks))  # fmt: skip
    return (o, pages) if return_sel else o
