"""Triton MSA prefill block selection (msa.md "Prefill" steps 1-3) for every (query block, KV head) of a batch.

Never materialises the (n/S)^2 block-score matrix: a program takes BLOCK_Q consecutive query blocks of one sequence
and one KV head (rows = BLOCK_Q x G query heads, so summary loads are shared) and streams over the candidate blocks;
pass 1 (`_select_lse_kernel`, on tiles of its own size) gets each head's log-sum-exp over the candidates, pass 2
(`_select_kernel`) scores sum_g exp(s_g - lse_g) and keeps a running top-k per query block of (score, block id)
packed into int64 keys: a chunk with more than MERGE_AT new contenders in some row is merged by a bitonic
half-cleaner (one sort), otherwise each contender replaces its row's current minimum (no sort; the common case once
the set has filled, since candidates stream from the most recent).
NOTE: the scoring dot runs on tensor cores with the mean query rounded to 16 bits (float16 against float8 min/max, else
the cache dtype; the reference keeps it in float32), so near-ties may resolve differently; with a float32 cache it is
exact.
"""

import functools

import torch
import triton
import triton.language as tl

from m3.kernels.kv_cache_ref import SUMMARY_FP8
from m3.kernels.paged_ref import num_selected, prefill_query_blocks, query_block_counts, segment_rows
from m3.kernels.remap import Remap, select_remapped

LOG2E = 1.4426950408889634
_MAX_ID_BITS = 16  # 32-bit selection keys keep >= 7 mantissa bits of the score (up to 65,536 blocks per sequence)


def selection_keys(dtype: torch.dtype, max_blocks: int) -> tuple[int, bool]:
    """(id_bits, keys32) of the top-k keys for block tables max_blocks wide: 32-bit keys (the score rounded to
    31 - id_bits bits, the block id below) for 16-bit queries, whose score is only as precise as the 16-bit scoring
    dot anyway; float32 keeps exact int64 keys."""
    id_bits = max(1, (max_blocks - 1).bit_length())
    return id_bits, dtype != torch.float32 and id_bits <= _MAX_ID_BITS


@triton.jit
def _dot(a, b, IS_FP32: tl.constexpr):
    # float32 operands: exact IEEE products (tf32 would change the selection and the flash-attention bar)
    if IS_FP32:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _summary_logits(
    qa, qb, KMEAN, KMIN, KMAX, phys, jm, h, d, dm,
    stride_sb, stride_sh,
    IS_BOUND: tl.constexpr, IS_FP32: tl.constexpr,
):  # fmt: skip
    """Raw block logits (rows, BLOCK_N) of query rows against the summaries of physical blocks phys (masked by jm)."""
    offs = phys.to(tl.int64)[:, None] * stride_sb + h * stride_sh + d[None, :]
    mask = jm[:, None] & dm[None, :]
    if IS_BOUND:
        # sum_d max(q_d*a_d, q_d*b_d) = max(q,0).kmax + min(q,0).kmin (msa.md): two dot products
        # (.to: min/max in float8, msa.md)
        kx = tl.load(KMAX + offs, mask=mask, other=0.0).to(qa.dtype)
        kn = tl.load(KMIN + offs, mask=mask, other=0.0).to(qb.dtype)
        s = _dot(qa, tl.trans(kx), IS_FP32) + _dot(qb, tl.trans(kn), IS_FP32)
    else:
        km = tl.load(KMEAN + offs, mask=mask, other=0.0)
        s = _dot(qa, tl.trans(km), IS_FP32)
    return s


@triton.jit
def _pack_keys(p, j, valid, id_bits=0, KEYS32: tl.constexpr = False):
    """(score >= 0, block id) -> keys ordered by score then id; -1 where invalid: int64, the score's float bits above
    the id; or (KEYS32) int32, the id in the low id_bits bits of the score's bits (the score rounded down to
    31 - id_bits bits: 8 of exponent, the rest of mantissa; block ids < 2^id_bits)."""
    bits = p.to(tl.int32, bitcast=True)
    if KEYS32:
        key = ((bits >> id_bits) << id_bits) | j
    else:
        key = (bits.to(tl.int64) << 32) | j.to(tl.int64)
    return tl.where(valid, key, -1)


@triton.jit
def _low_ids(keys, id_bits=0, KEYS32: tl.constexpr = False):
    if KEYS32:
        ids = keys & ((1 << id_bits) - 1)
    else:
        ids = (keys - ((keys >> 32) << 32)).to(tl.int32)
    return ids


@triton.jit
def _min_first(v1, i1, v2, i2):
    """Combine of a (value, index) reduction: the smaller value, the lower index on ties (as tl.argmin)."""
    first = (v1 < v2) | ((v1 == v2) & (i1 < i2))
    return tl.where(first, v1, v2), tl.where(first, i1, i2)


@triton.jit
def _qbar_kernel(
    Q, QBAR, QB_SEQ, QB_ID, CU_Q, Q_START, SEQ_LENS,
    stride_qt, stride_qh, stride_bq, stride_bh,
    dense_below, head_dim,
    S: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    w = tl.program_id(0)
    hq = tl.program_id(1)
    b = tl.load(QB_SEQ + w)
    if b < 0:
        return
    i = tl.load(QB_ID + w)
    q_start = tl.load(Q_START + b)
    cu = tl.load(CU_Q + b)
    lo = tl.maximum(q_start, i * S)
    hi = tl.minimum(tl.load(SEQ_LENS + b), i * S + S)
    # the block is scored with its MSA tokens (position >= dense_below); with none, all (the selection is unused)
    lo_msa = tl.maximum(lo, dense_below)
    lo = tl.where(lo_msa < hi, lo_msa, lo)
    d = tl.arange(0, BLOCK_D)
    dm = d < head_dim
    acc = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
    for t0 in range(lo, hi, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        tok = (cu - q_start + t).to(tl.int64)
        x = tl.load(
            Q + tok[:, None] * stride_qt + hq * stride_qh + d[None, :], mask=(t < hi)[:, None] & dm[None, :], other=0.0
        )
        acc += x.to(tl.float32)
    qbar = tl.sum(acc, axis=0) / (hi - lo).to(tl.float32)
    tl.store(QBAR + w.to(tl.int64) * stride_bq + hq * stride_bh + d, qbar, mask=dm)


@triton.jit
def _scoring_queries(qbar, KMEAN, KMIN, KMAX, IS_BOUND: tl.constexpr):
    """The operands of the block logits: max(q,0), min(q,0) for the bound score, q for the mean score."""
    if IS_BOUND:
        if KMEAN.dtype.element_ty == tl.bfloat16 and KMIN.dtype.element_ty != tl.bfloat16:
            # float8 summaries (or prefill's float16 copy of them) against float16 operands: float8 -> bfloat16
            # costs many more instructions (Nsight Compute, decode scoring at 1M x 1: 6.20M vs 4.56M; 18.9 vs 13.0 us
            # on the H200, session-8 probe)
            qa = tl.maximum(qbar, 0.0).to(tl.float16)
            qb = tl.minimum(qbar, 0.0).to(tl.float16)
        else:
            qa = tl.maximum(qbar, 0.0).to(KMEAN.dtype.element_ty)
            qb = tl.minimum(qbar, 0.0).to(KMEAN.dtype.element_ty)
    else:
        qa = qbar.to(KMEAN.dtype.element_ty)
        qb = qa
    return qa, qb


@triton.jit
def _tile(
    QBAR, KMEAN, KMIN, KMAX, BT, TILE_W0, QB_SEQ, QB_ID, pid, h, b,
    stride_bq, stride_bh, stride_bt, num_rows, head_dim,
    G: tl.constexpr, WINDOW: tl.constexpr, SINK: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr, IS_BOUND: tl.constexpr,
):  # fmt: skip
    """A tile of the selection: BLOCK_Q consecutive query blocks of sequence b (candidates of block i are
    SINK <= j < i - WINDOW); rows r = q * BLOCK_G + g are the G query heads of each block (padded to BLOCK_G), and
    their scoring operands qa, qb (_scoring_queries of the mean queries)."""
    w0 = tl.load(TILE_W0 + pid)
    wq = w0 + tl.arange(0, BLOCK_Q)
    ok_q = tl.load(QB_SEQ + wq, mask=wq < num_rows, other=-1) == b
    i_q = tl.load(QB_ID + wq, mask=ok_q, other=0)
    hi_q = tl.where(ok_q, i_q - WINDOW, SINK)
    r = tl.arange(0, BLOCK_Q * BLOCK_G)
    wr = w0 + r // BLOCK_G
    g = r % BLOCK_G
    ok_r = (tl.load(QB_SEQ + wr, mask=wr < num_rows, other=-1) == b) & (g < G)
    hi_r = tl.where(ok_r, tl.load(QB_ID + wr, mask=ok_r, other=0) - WINDOW, SINK)
    d = tl.arange(0, BLOCK_D)
    qbar = tl.load(
        QBAR + wr.to(tl.int64)[:, None] * stride_bq + (h * G + g)[:, None] * stride_bh + d[None, :],
        mask=ok_r[:, None] & (d < head_dim)[None, :],
        other=0.0,
    )  # (BLOCK_Q * BLOCK_G, BLOCK_D) float32
    qa, qb = _scoring_queries(qbar, KMEAN, KMIN, KMAX, IS_BOUND)
    return BT + b.to(tl.int64) * stride_bt, wq, ok_q, i_q, hi_q, wr, g, ok_r, hi_r, qa, qb, tl.max(hi_q)


@triton.jit
def _chunk(bt_row, phys_n, c, j_hi, SINK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr):
    """Candidate chunk c (streamed from the most recent block back): its blocks j, jm = j >= SINK, their physical
    blocks (loaded one chunk ahead: phys_n), the next chunk's, and whether the chunk needs row masks: only the first
    chunks (rows' own ends: every valid row of the tile has hi_r >= j_hi - BLOCK_Q + 1) and the last (sinks)."""
    j = j_hi - (c + 1) * BLOCK_N + tl.arange(0, BLOCK_N)
    # NOTE: the next chunk's table entries load here and are used one step later: a load used at once stalled every
    # step (31.7 vs 35.1 ms at 1M with the unmasked middle chunks and three stages, kernel_ab record)
    phys_next = tl.load(bt_row + j - BLOCK_N, mask=j - BLOCK_N >= SINK, other=0)
    edge = (c * BLOCK_N < BLOCK_Q) | (j_hi - (c + 1) * BLOCK_N < SINK)
    return j, j >= SINK, phys_n, phys_next, edge


@triton.jit
def _row_lse(
    qa, qb, KMEAN, KMIN, KMAX, bt_row, hi_r, h, j_hi, d, dm, stride_sb, stride_sh, qk_scale,
    SINK: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_G: tl.constexpr, IS_BOUND: tl.constexpr,
    IS_FP32: tl.constexpr,
):  # fmt: skip
    """Pass 1: each row's log-sum-exp (log2 domain) over its candidates (SINK <= j < hi_r), streamed from j_hi down."""
    n_chunks = tl.cdiv(tl.maximum(j_hi - SINK, 0), BLOCK_N)
    m = tl.full([BLOCK_Q * BLOCK_G], -1.0e30, tl.float32)
    l_sum = tl.zeros([BLOCK_Q * BLOCK_G], tl.float32)
    jn = j_hi - BLOCK_N + tl.arange(0, BLOCK_N)
    phys_n = tl.load(bt_row + jn, mask=tl.where(n_chunks > 0, jn >= SINK, False), other=0)
    for c in range(0, n_chunks):
        j, jm, phys, phys_n, edge = _chunk(bt_row, phys_n, c, j_hi, SINK, BLOCK_N, BLOCK_Q)
        s = _summary_logits(qa, qb, KMEAN, KMIN, KMAX, phys, jm, h, d, dm, stride_sb, stride_sh, IS_BOUND, IS_FP32)
        s = s * qk_scale
        if edge:
            s = tl.where(jm[None, :] & (j[None, :] < hi_r[:, None]), s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        l_sum = l_sum * tl.math.exp2(m - m_new) + tl.sum(tl.math.exp2(s - m_new[:, None]), axis=1)
        m = m_new
    return m + tl.math.log2(l_sum)


@triton.jit
def _select_lse_kernel(
    QBAR, KMEAN, KMIN, KMAX, BT, LSE, TILE_SEQ, TILE_W0, QB_SEQ, QB_ID,
    stride_bq, stride_bh, stride_sb, stride_sh, stride_bt, stride_lq,
    num_rows, head_dim, qk_scale,
    G: tl.constexpr, SINK: tl.constexpr, WINDOW: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_Q: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IS_BOUND: tl.constexpr, IS_FP32: tl.constexpr,
):  # fmt: skip
    """Pass 1 on tiles of its own size: each row's log-sum-exp over its candidates into LSE (Qmax, H) float32."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.load(TILE_SEQ + pid)
    if b < 0:
        return
    bt_row, wq, ok_q, i_q, hi_q, wr, g, ok_r, hi_r, qa, qb, j_hi = _tile(
        QBAR, KMEAN, KMIN, KMAX, BT, TILE_W0, QB_SEQ, QB_ID, pid, h, b, stride_bq, stride_bh, stride_bt, num_rows,
        head_dim, G, WINDOW, SINK, BLOCK_G, BLOCK_Q, BLOCK_D, IS_BOUND,
    )  # fmt: skip
    d = tl.arange(0, BLOCK_D)
    lse = _row_lse(qa, qb, KMEAN, KMIN, KMAX, bt_row, hi_r, h, j_hi, d, d < head_dim, stride_sb, stride_sh, qk_scale,
                   SINK, BLOCK_N, BLOCK_Q, BLOCK_G, IS_BOUND, IS_FP32)  # fmt: skip
    # padding rows are not stored (pass 2 reads +inf for them: p = 0)
    tl.store(LSE + wr.to(tl.int64) * stride_lq + h * G + g, lse, mask=ok_r)


@triton.jit(do_not_specialize=["id_bits"])  # (one variant for every block-table width)
def _select_kernel(
    QBAR, KMEAN, KMIN, KMAX, BT, SEL, LSE, TILE_SEQ, TILE_W0, QB_SEQ, QB_ID,
    stride_bq, stride_bh, stride_sb, stride_sh, stride_bt, stride_selq, stride_selh, stride_lq,
    num_rows, head_dim, qk_scale, id_bits,
    G: tl.constexpr, SINK: tl.constexpr, WINDOW: tl.constexpr, TOPK: tl.constexpr, NUM_SEL: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_SEL: tl.constexpr, BLOCK_D: tl.constexpr, IS_BOUND: tl.constexpr, IS_FP32: tl.constexpr,
    MERGE_AT: tl.constexpr, INLINE_LSE: tl.constexpr, KEYS32: tl.constexpr,
):  # fmt: skip
    """Pass 2 (and pass 1 first, INLINE_LSE) of a tile: its rows' selections into SEL."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = tl.load(TILE_SEQ + pid)
    if b < 0:
        return
    bt_row, wq, ok_q, i_q, hi_q, wr, g, ok_r, hi_r, qa, qb, j_hi = _tile(
        QBAR, KMEAN, KMIN, KMAX, BT, TILE_W0, QB_SEQ, QB_ID, pid, h, b, stride_bq, stride_bh, stride_bt, num_rows,
        head_dim, G, WINDOW, SINK, BLOCK_G, BLOCK_Q, BLOCK_D, IS_BOUND,
    )  # fmt: skip
    d = tl.arange(0, BLOCK_D)
    dm = d < head_dim
    n_chunks = tl.cdiv(tl.maximum(j_hi - SINK, 0), BLOCK_N)
    if TOPK == 0:
        n_chunks = n_chunks * 0
    lse = tl.full([BLOCK_Q * BLOCK_G], float("inf"), tl.float32)
    if TOPK > 0:  # (pass 1: each row's log-sum-exp; +inf for padding rows)
        if INLINE_LSE:
            lse = _row_lse(qa, qb, KMEAN, KMIN, KMAX, bt_row, hi_r, h, j_hi, d, dm, stride_sb, stride_sh, qk_scale,
                           SINK, BLOCK_N, BLOCK_Q, BLOCK_G, IS_BOUND, IS_FP32)  # fmt: skip
            lse = tl.where(ok_r, lse, float("inf"))
        else:
            lse = tl.load(LSE + wr.to(tl.int64) * stride_lq + h * G + g, mask=ok_r, other=float("inf"))
    # -- pass 2: probabilities summed over the group, streaming top-k per query block --
    run = tl.full([BLOCK_Q, BLOCK_K], -1, tl.int32)  # sorted descending
    if not KEYS32:
        run = run.to(tl.int64)
    jn = j_hi - BLOCK_N + tl.arange(0, BLOCK_N)
    phys_n = tl.load(bt_row + jn, mask=tl.where(n_chunks > 0, jn >= SINK, False), other=0)
    for c in range(0, n_chunks):
        j, jm, phys, phys_n, edge = _chunk(bt_row, phys_n, c, j_hi, SINK, BLOCK_N, BLOCK_Q)
        s = _summary_logits(qa, qb, KMEAN, KMIN, KMAX, phys, jm, h, d, dm, stride_sb, stride_sh, IS_BOUND, IS_FP32)
        p = tl.math.exp2(s * qk_scale - lse[:, None])  # padding rows: lse = +inf, p = 0
        if edge:
            p = tl.where(jm[None, :] & (j[None, :] < hi_r[:, None]), p, 0.0)
        pq = tl.sum(tl.reshape(p, [BLOCK_Q, BLOCK_G, BLOCK_N]), axis=1)  # (BLOCK_Q, BLOCK_N)
        key = _pack_keys(pq, j[None, :], True, id_bits, KEYS32)
        if edge:
            key = tl.where(jm[None, :] & (j[None, :] < hi_q[:, None]), key, -1)
        # candidates that beat their row's current k-th best; keys are unique, so the set stays exact
        cand = tl.where(key > tl.min(run, axis=1)[:, None], key, -1)
        n_new = tl.max(tl.sum((cand >= 0).to(tl.int32), axis=1))
        if n_new > MERGE_AT:
            # -- many: merge the chunk's best BLOCK_K ascending against the running set descending; the elementwise
            # max of the two is the best BLOCK_K of their union (bitonic half-cleaner) --
            srt = tl.sort(key, dim=1)
            top = tl.max(tl.reshape(srt, [BLOCK_Q, BLOCK_N // BLOCK_K, BLOCK_K]), axis=1)
            run = tl.maximum(tl.sort(run, dim=1, descending=True), top)
        else:
            # -- few (the common case once the set has filled): each replaces its row's current minimum --
            slot = tl.arange(0, BLOCK_K)[None, :]
            for _ in range(0, n_new):
                best = tl.max(cand, axis=1)  # (BLOCK_Q,)
                # the row's minimum and its first slot in one reduction (34.7 vs 35.8 ms at 1M as two, H200)
                low, worst = tl.reduce((run, tl.broadcast_to(slot, run.shape)), 1, _min_first)
                run = tl.where((best > low)[:, None] & (slot == worst[:, None]), best[:, None], run)
                cand = tl.where(cand == best[:, None], -1, cand)
    run = tl.sort(run, dim=1, descending=True)
    # -- chosen blocks: the best TOPK, as ascending ids --
    rank = tl.arange(0, BLOCK_K)
    chosen = (rank[None, :] < TOPK) & (run >= 0)
    ids = tl.sort(tl.where(chosen, _low_ids(run, id_bits, KEYS32), 2147483647), dim=1)
    n_ch = tl.sum(chosen.to(tl.int32), axis=1)
    # -- pack the row: sinks, chosen, window, current block, -1 padding (ascending ids) --
    n_sink = tl.minimum(i_q, SINK)
    w_lo = tl.maximum(i_q - WINDOW, SINK)
    n_win = tl.maximum(i_q - w_lo, 0)
    a = n_sink + n_ch
    pos = tl.arange(0, BLOCK_SEL)[None, :]
    forced = tl.where(
        pos < n_sink[:, None],
        pos,
        tl.where(
            pos < (a + n_win)[:, None],
            w_lo[:, None] + pos - a[:, None],
            tl.where(pos == (a + n_win)[:, None], i_q[:, None], -1),
        ),
    )
    row = SEL + wq.to(tl.int64)[:, None] * stride_selq + h * stride_selh
    in_chosen = (pos >= n_sink[:, None]) & (pos < a[:, None])
    tl.store(row + pos, forced, mask=ok_q[:, None] & (pos < NUM_SEL) & ~in_chosen)
    kk = tl.arange(0, BLOCK_K)[None, :]
    tl.store(row + n_sink[:, None] + kk, ids, mask=ok_q[:, None] & (kk < n_ch[:, None]))


def _check_summaries(kmean, kmin, kmax, score: str):
    assert score in ("bound", "mean"), score
    if score == "bound":
        assert kmin is not None and kmax is not None, "score='bound' needs kmin and kmax"
        assert kmin.shape == kmax.shape == kmean.shape and kmin.dtype == kmax.dtype
        assert kmin.dtype in (SUMMARY_FP8, kmean.dtype), "kmin/kmax: float8 e4m3 (msa.md) or the cache dtype"
        assert kmin.stride() == kmax.stride() == kmean.stride()
    assert kmean.dim() == 3 and kmean.stride(-1) == 1
    kmin = kmean if kmin is None else kmin
    kmax = kmean if kmax is None else kmax
    return kmin, kmax


@functools.lru_cache
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def _tiles(counts: torch.Tensor, num_rows: int, block_q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles of block_q consecutive query blocks of one sequence, built on the device (no sync): (sequence, first
    row) per tile, -1 for unused ones. A tile's work grows with its position (candidates = earlier blocks), so the
    last tiles come first and the grid ends on short ones (35.8 vs 36.6 ms at 1M on the H200, session-4 experiment)."""
    num_tiles = triton.cdiv(num_rows, block_q) + counts.shape[0]
    tile_seq, tile_idx = segment_rows((counts + block_q - 1) // block_q, num_tiles)
    row_start = torch.cumsum(counts, 0) - counts
    tile_w0 = torch.where(tile_seq >= 0, row_start[tile_seq.clamp(min=0).long()] + tile_idx * block_q, -1).int()
    return tile_seq.flip(0), tile_w0.flip(0)


def select_config(group: int, topk_blocks: int) -> dict:
    """Tile sizes of the selection kernel: ~128 rows (query blocks x padded group) share each summary load."""
    block_g = triton.next_power_of_2(group)
    block_k = triton.next_power_of_2(max(topk_blocks, 1))
    block_q = max(1, min(32, 128 // block_g))
    # NOTE: 8 warps even for small tiles: the (BLOCK_Q, BLOCK_N) int64 sorts spill registers with 4 on sm_90.
    # Three stages and pass 1 (log-sum-exp) in its own kernel on tiles of twice the query blocks: 31.3 ms at 1M on
    # the H200 against 35.1 with the session-5 kernel (with the unmasked middle chunks); the mean-query kernel with two
    # warps: 29.9 vs 31.1 ms (it took 4.1 ms with four, twice its read of q; kernel_ab records, session 6)
    return dict(BLOCK_Q=block_q, BLOCK_N=max(64, block_k), MERGE_AT=8, num_warps=8, num_stages=3,
                LSE_BLOCK_Q=2 * block_q, LSE_WARPS=8, LSE_STAGES=3, QBAR_WARPS=2, INLINE_LSE=None,
                KEYS32=None)  # fmt: skip


def prefill_select_rows(
    q, kmean, kmin, kmax, block_tables, cu_seqlens_q, q_start, seq_lens, qb_seq, qb_ids, *,
    block_size: int, sink_blocks: int, window_blocks: int, topk_blocks: int, score: str, dense_below: int,
    config: dict | None = None,
) -> torch.Tensor:  # fmt: skip
    """msa_prefill_select over a precomputed query-block table (qb_seq, qb_ids) from prefill_query_blocks."""
    num_tokens, num_heads, head_dim = q.shape
    num_blocks, num_kv_heads, _ = kmean.shape
    group = num_heads // num_kv_heads
    kmin, kmax = _check_summaries(kmean, kmin, kmax, score)
    assert num_heads == group * num_kv_heads and kmean.shape[2] == head_dim and q.stride(-1) == 1
    assert q.dtype in (torch.float16, torch.bfloat16, torch.float32) and kmean.dtype == q.dtype
    assert block_tables.dtype == torch.int32 and block_tables.stride(-1) == 1
    assert cu_seqlens_q.dtype == q_start.dtype == seq_lens.dtype == torch.int32
    assert block_size & (block_size - 1) == 0, "block_size must be a power of two"
    num_rows = qb_seq.shape[0]
    num_sel = num_selected(sink_blocks, window_blocks, topk_blocks)
    sel = torch.full((num_rows, num_kv_heads, num_sel), -1, dtype=torch.int32, device=q.device)
    if num_rows == 0 or num_tokens == 0:
        return sel
    block_d = triton.next_power_of_2(head_dim)
    # -- per query block, the mean query of each head --
    qbar = torch.empty(num_rows, num_heads, head_dim, dtype=torch.float32, device=q.device)
    cfg = {**select_config(group, topk_blocks), **(config or {})}
    _qbar_kernel[(num_rows, num_heads)](
        q, qbar, qb_seq, qb_ids, cu_seqlens_q, q_start, seq_lens,
        q.stride(0), q.stride(1), qbar.stride(0), qbar.stride(1),
        dense_below, head_dim,
        S=block_size, BLOCK_T=min(64, triton.next_power_of_2(block_size)), BLOCK_D=block_d,
        num_warps=cfg.pop("QBAR_WARPS"),
    )  # fmt: skip
    block_q, lse_block_q = cfg.pop("BLOCK_Q"), cfg.pop("LSE_BLOCK_Q")
    lse_launch = dict(num_warps=cfg.pop("LSE_WARPS"), num_stages=cfg.pop("LSE_STAGES"))
    counts = query_block_counts(q_start, seq_lens, block_size)
    common = dict(G=group, SINK=sink_blocks, WINDOW=window_blocks, BLOCK_G=triton.next_power_of_2(group),
                  BLOCK_D=block_d, IS_BOUND=score == "bound", IS_FP32=q.dtype == torch.float32)  # fmt: skip
    if kmin.dtype == SUMMARY_FP8 and q.dtype != torch.float32:
        # float8 min/max widened to float16 once per call (the same values; the whole pool's min/max, ~100 MB of
        # traffic at 1M, timed only inside the selection: 30.1 ms with it): the tiles then load 16-bit summaries
        # straight into shared memory for the dot, where converting float8 in every tile cost 11% of the selection at
        # 1M (33.4 vs 30.0 ms on the H200, session 8)
        kmin, kmax = kmin.to(torch.float16), kmax.to(torch.float16)
    sums = (qbar, kmean, kmin, kmax, block_tables)
    inline = cfg.pop("INLINE_LSE")
    id_bits, keys32 = selection_keys(q.dtype, block_tables.shape[1])
    forced_keys = cfg.pop("KEYS32")  # (an A/B override: True / False)
    keys32 = keys32 if forced_keys is None else forced_keys
    if inline is None:  # short prefills: pass 1 inside the selection kernel, one launch (H200, session 7: 1.13 vs
        # 2.02 ms at 32K, 2.21 vs 3.01 at 128K, 30.7 vs 29.8 at 1M; 512 tiles x KV heads at 128K, 32768 at 1M). Above
        # this, pass 1's tiles of twice the query blocks still number at least 4 per SM
        inline = triton.cdiv(num_rows, block_q) * num_kv_heads < 8 * _num_sms(q.device)
    lse = torch.empty(num_rows, num_heads, dtype=torch.float32, device=q.device)
    if topk_blocks > 0 and not inline:
        # -- pass 1 on tiles of its own: without the top-k's registers a tile of twice the rows fits --
        tile_seq, tile_w0 = _tiles(counts, num_rows, lse_block_q)
        _select_lse_kernel[(tile_seq.shape[0], num_kv_heads)](
            *sums, lse, tile_seq, tile_w0, qb_seq, qb_ids,
            qbar.stride(0), qbar.stride(1), kmean.stride(0), kmean.stride(1), block_tables.stride(0), lse.stride(0),
            num_rows, head_dim, LOG2E / head_dim**0.5,
            BLOCK_Q=lse_block_q, BLOCK_N=cfg["BLOCK_N"], **lse_launch, **common,
        )  # fmt: skip
    tile_seq, tile_w0 = _tiles(counts, num_rows, block_q)
    _select_kernel[(tile_seq.shape[0], num_kv_heads)](
        *sums, sel, lse, tile_seq, tile_w0, qb_seq, qb_ids,
        qbar.stride(0), qbar.stride(1), kmean.stride(0), kmean.stride(1), block_tables.stride(0),
        sel.stride(0), sel.stride(1), lse.stride(0),
        num_rows, head_dim, LOG2E / head_dim**0.5, id_bits,
        TOPK=topk_blocks, NUM_SEL=num_sel, BLOCK_Q=block_q, BLOCK_K=triton.next_power_of_2(max(topk_blocks, 1)),
        BLOCK_SEL=triton.next_power_of_2(num_sel), INLINE_LSE=inline, KEYS32=keys32,
        **common, **cfg,
    )  # fmt: skip
    return sel


def msa_prefill_select(
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
    """Selection rows of every query block of a prefill step (twin of paged_ref.msa_prefill_select_ref).

    q: (T, H, D) post-RoPE; kmean/kmin/kmax: (NB, Hkv, D) summaries of full blocks; block_tables: (B, max_blocks)
    int32; cu_seqlens_q: (B+1,), q_start, seq_lens: (B,) int32. Returns sel (Qmax, Hkv, K) int32, row w for the query
    block (qb_seq[w], qb_ids[w]) of paged_ref.prefill_query_blocks, logical ids ascending, -1 padded.
    """
    qb_seq, qb_ids = prefill_query_blocks(q.shape[0], q_start, seq_lens, block_size)
    return select_remapped(
        lambda qq, *sums: prefill_select_rows(
            qq, *sums, block_tables, cu_seqlens_q, q_start, seq_lens, qb_seq, qb_ids, block_size=block_size,
            sink_blocks=sink_blocks, window_blocks=window_blocks, topk_blocks=topk_blocks, score=score,
            dense_below=dense_below,
        ),
        q, (kmean, kmin, kmax), qb_ids, remap,
    )  # fmt: skip
