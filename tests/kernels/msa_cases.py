"""Random paged MSA batches and naive masked attention, shared by the paged-reference, interpreter and GPU tests.

Keys carry a per-block bias and queries a per-query-block bias, so block scores are spread out (selections have no
near-ties) while token-level attention stays random. Unwritten cache slots hold NaN, so a kernel that reads past a
sequence's end, or an unselected page, fails loudly.
"""

import math
from dataclasses import dataclass

import torch

from m3.kernels.kv_cache_ref import SUMMARY_FP8, rope, store_kv_ref, summarize_blocks_ref, unrope
from m3.kernels.msa_select_ref import block_scores_ref
from m3.kernels.paged_ref import prefill_query_blocks
from m3.kernels.remap import Remap, key_cos_sin, rope_tables


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
    summary_dtype: torch.dtype | None = SUMMARY_FP8,
) -> Batch:
    """specs: per sequence (tokens cached before the step, query tokens). decode=True: q is (B, H, D), one token per
    sequence at position seq_len - 1 (query length 1 or 0 for padding rows). summary_dtype of kmin/kmax: float8 as
    the engine stores them, None = the cache dtype."""
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
    kmean, kmin, kmax = (torch.full((num_blocks, Hkv, D), float("nan"), dtype=dt)
                         for dt in (dtype, summary_dtype or dtype, summary_dtype or dtype))  # fmt: skip
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


def query_positions(batch: Batch, decode: bool = False) -> torch.Tensor:
    """(T,) absolute position of every query row of the batch (decode: seq_len - 1, 0 for padding rows)."""
    if decode:
        return (batch.seq_lens.long() - 1).clamp(min=0)
    return torch.cat([torch.arange(int(s), int(e)) for s, e in zip(batch.q_start, batch.seq_lens)]).to(batch.q.device)


def make_remap(batch: Batch, *, window_blocks: int, from_block: int, decode: bool = False, theta: float = 10000.0):
    """Remap inputs for a batch: tables from a RoPE of base theta, q_remote = q un-rotated from its position and
    rotated at window_blocks * S, summaries of the un-rotated keys of every full block."""
    S, D = batch.block_size, batch.q.shape[-1]
    dev = batch.q.device
    inv_freq = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    tables = rope_tables(inv_freq, batch.block_tables.shape[1], S, dev)
    raw = [torch.full_like(s, float("nan")) for s in (batch.kmean, batch.kmin, batch.kmax)]
    remap = Remap(batch.q, *raw, *tables, window_blocks=window_blocks, from_block=from_block)
    cos, sin = key_cos_sin(remap, query_positions(batch, decode))
    far_cos, far_sin = key_cos_sin(remap, torch.full((1,), window_blocks * S, device=dev))
    q_raw = unrope(batch.q.float(), cos[:, None, :], sin[:, None, :])
    q_remote = rope(q_raw, far_cos[:, None, :], far_sin[:, None, :]).to(batch.q.dtype)
    for b, L in enumerate(batch.seq_lens.tolist()):
        n = max(L, 0) // S
        if n == 0:
            continue
        phys = batch.block_tables[b, :n].long()
        kc, ks = key_cos_sin(remap, torch.arange(n * S, device=dev).view(n, S))
        summarize_blocks_ref(batch.k_cache, phys, *raw, unrotate=(kc, ks))
    return remap._replace(q_remote=q_remote)


def allowed_mask(pos: torch.Tensor, sel_rows: torch.Tensor, seq_len: int, block_size: int, dense_below: int):
    """(n, Hkv, L) bool: keys each query token may see, from its selection row (n, Hkv, K), causality and
    dense_below."""
    key_block = torch.arange(seq_len, device=pos.device) // block_size
    inside = (sel_rows[..., None].long() == key_block).any(-2)  # (n, Hkv, L)
    causal = torch.arange(seq_len, device=pos.device)[None, :] <= pos[:, None]  # (n, L)
    dense = (pos < dense_below)[:, None, None]
    return (inside | dense) & causal[:, None, :]


def naive_attention(q, k, v, allowed, upcast: bool = True, far=None):
    """Masked softmax attention, q (n, H, D), k/v (L, Hkv, D), allowed (n, Hkv, L). upcast=False mimics a kernel in
    q's dtype: scores and the P.V product in that dtype, softmax in float32 (the flash-attention test reference).
    far = (q_remote (n, H, D), k_raw (L, Hkv, D) float32, is_far (n, Hkv, L)): remapped scores where is_far."""
    group = q.shape[1] // k.shape[1]
    dt = torch.float32 if upcast else q.dtype
    qq, kk, vv = (x.to(dt) for x in (q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)))
    s = torch.einsum("thd,lhd->thl", qq * (1 / math.sqrt(q.shape[-1])), kk).float()
    if far is not None:
        qr, kr = far[0].to(dt), far[1].to(dt).repeat_interleave(group, 1)
        s_far = torch.einsum("thd,lhd->thl", qr * (1 / math.sqrt(q.shape[-1])), kr).float()
        s = torch.where(far[2].repeat_interleave(group, 1), s_far, s)
    s = s.masked_fill(~allowed.repeat_interleave(group, 1), float("-inf"))
    p = torch.softmax(s, -1).to(dt)
    return torch.einsum("thl,lhd->thd", p, vv).float()


def seq_kv(batch: Batch, b: int):
    L, S = int(batch.seq_lens[b]), batch.block_size
    table = batch.block_tables[b, : (L + S - 1) // S].long()
    return batch.k_cache[table].flatten(0, 1)[:L], batch.v_cache[table].flatten(0, 1)[:L]


def far_inputs(remap: Remap | None, k, pos, sel_rows, block_size: int, dense_below: int, q_remote):
    """naive_attention's `far` for query tokens at pos (n,) with selection rows (n, Hkv, K), or None."""
    if remap is None:
        return None
    cos, sin = key_cos_sin(remap, torch.arange(k.shape[0], device=k.device))
    k_raw = unrope(k.float(), cos[:, None, :], sin[:, None, :])
    i = torch.div(pos, block_size, rounding_mode="floor")
    key_block = torch.arange(k.shape[0], device=k.device) // block_size
    remote_block = key_block[None, :] < (i - remap.window_blocks)[:, None]  # (n, L)
    row_far = (i >= remap.from_block) & (pos >= dense_below)  # (n,)
    inside = (sel_rows[..., None].long() == key_block).any(-2)  # (n, Hkv, L)
    is_far = inside & remote_block[:, None, :] & row_far[:, None, None]
    return q_remote, k_raw, is_far


def naive_prefill(
    batch: Batch, sel: torch.Tensor, dense_below: int, upcast: bool = True, remap: Remap | None = None
) -> torch.Tensor:
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
        qr = None if remap is None else remap.q_remote[cu[b] : cu[b + 1]]
        far = far_inputs(remap, k, pos, sel[rows][row_of], S, dense_below, qr)
        out[cu[b] : cu[b + 1]] = naive_attention(batch.q[cu[b] : cu[b + 1]], k, v, allowed, upcast, far)
    return out


def naive_decode(
    batch: Batch, pages: torch.Tensor, upcast: bool = True, remap: Remap | None = None, dense_below: int = 0
) -> torch.Tensor:
    out = torch.zeros(batch.q.shape, dtype=torch.float32, device=batch.q.device)
    for b, L in enumerate(batch.seq_lens.tolist()):
        if L <= 0:
            continue
        k, v = seq_kv(batch, b)
        pos = torch.tensor([L - 1], device=batch.q.device)
        allowed = allowed_mask(pos, pages[b : b + 1], L, batch.block_size, 0)
        qr = None if remap is None else remap.q_remote[b : b + 1]
        far = far_inputs(remap, k, pos, pages[b : b + 1], batch.block_size, dense_below, qr)
        out[b] = naive_attention(batch.q[b : b + 1], k, v, allowed, upcast, far)[0]
    return out


def selected_mass(sel_rows: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Score mass of selected blocks: probs (R, Hkv, N) per logical block, sel_rows (R, Hkv, K) -> (R, Hkv)."""
    idx = sel_rows.long()
    return torch.where(idx >= 0, probs.gather(-1, idx.clamp(min=0)), 0.0).sum(-1)


def block_probs(batch: Batch, qbar: torch.Tensor, row_seq: torch.Tensor, row_ids: torch.Tensor, *, sink_blocks: int,
                window_blocks: int, score: str, sums: tuple | None = None) -> torch.Tensor:  # fmt: skip
    """Reference selection scores (msa.md step 2) of rows (qbar (R, H, D), sequence and query block of each):
    (R, Hkv, max_blocks), softmax over the row's candidates summed over the group, zero outside the candidates.
    sums: (kmean, kmin, kmax) to score against instead of the batch's (remap: summaries of un-rotated keys)."""
    kmean, kmin, kmax = sums or (batch.kmean, batch.kmin, batch.kmax)
    num_kv_heads, max_blocks = batch.kmean.shape[1], batch.block_tables.shape[1]
    probs = torch.zeros(qbar.shape[0], num_kv_heads, max_blocks, device=qbar.device)
    S = batch.block_size
    for b in row_seq.unique().tolist():
        if b < 0:
            continue
        rows = (row_seq == b).nonzero().squeeze(1)
        num_full = int(batch.seq_lens[b]) // S
        if num_full == 0:
            continue
        table = batch.block_tables[b, :num_full].long()
        s = block_scores_ref(qbar[rows], kmean[table], kmin[table], kmax[table], score)
        j = torch.arange(num_full, device=qbar.device)
        cand = (j[None, :] >= sink_blocks) & (j[None, :] < row_ids[rows].long()[:, None] - window_blocks)
        p = torch.softmax(s.masked_fill(~cand[:, None, None, :], float("-inf")), -1).nan_to_num(0.0).sum(2)
        probs[rows, :, :num_full] = p
    return probs


def check_selection(sel_k, sel_r, probs, row_ids, *, sink_blocks: int, window_blocks: int, exact: bool):
    """Kernel vs reference selection rows: identical forced blocks and counts; the chosen candidates identical
    (exact) or carrying the same reference score mass up to 1% (ties and rounding of the scoring query may swap
    near-equal blocks). Returns the worst relative mass shortfall."""
    valid = row_ids >= 0
    sel_k, sel_r, probs, i = sel_k[valid].long(), sel_r[valid].long(), probs[valid], row_ids[valid].long()
    assert ((sel_k >= 0).sum(-1) == (sel_r >= 0).sum(-1)).all(), "selection sizes differ"
    hi = (i - window_blocks)[:, None, None]
    cand_k = (sel_k >= sink_blocks) & (sel_k < hi)
    cand_r = (sel_r >= sink_blocks) & (sel_r < hi)
    assert (cand_k == cand_r).all() and (sel_k == sel_r)[~cand_r].all(), "forced blocks differ"
    if exact:
        assert (sel_k == sel_r).all(), "chosen blocks differ"
    mass_k = selected_mass(torch.where(cand_k, sel_k, -1), probs)
    mass_r = selected_mass(torch.where(cand_r, sel_r, -1), probs)
    short = ((mass_r - mass_k) / mass_r.clamp(min=1e-12)).clamp(min=0)
    assert (short <= 1e-2).all(), f"selected score mass short by {short.max().item():.3g}"
    return short.max().item() if short.numel() else 0.0


def assert_flash_bar(out: torch.Tensor, ref32: torch.Tensor, ref_lowp: torch.Tensor, what: str = ""):
    """Flash-attention accuracy bar: error vs the float32 reference at most 2x the error of the reference run in the
    kernel's dtype (float32 kernels: a tight absolute bound instead, as that error is ~0)."""
    err = (out.float() - ref32).abs().max().item()
    if out.dtype == torch.float32:
        tol = 2e-5 * max(1.0, ref32.abs().max().item())
    else:
        tol = 2 * (ref_lowp - ref32).abs().max().item()
    assert err <= tol, f"{what}: error {err:.3g} > bar {tol:.3g}"
    return err, tol


# -- kernel-vs-reference checks, shared by the interpreter (CPU) and GPU tests --


def check_kv_cache(device: str, dtype: torch.dtype, *, num_kv_heads=2, head_dim=32, block_size=16, seed=0,
                   summary_dtype: torch.dtype | None = SUMMARY_FP8):  # fmt: skip
    from m3.kernels.kv_cache import store_kv, summarize_blocks

    gen = torch.Generator().manual_seed(seed)
    T, NB = 3 * block_size + 5, 6
    wide = torch.randn(T, 2 * num_kv_heads, head_dim, generator=gen).to(device, dtype)
    k, v = wide[:, :num_kv_heads], wide[:, num_kv_heads:]  # NOTE: strided views, as sliced from a fused qkv
    slots = torch.randperm(NB * block_size, generator=gen)[:T]
    slots[3] = -1
    slots = slots.to(device)
    caches = [torch.full((NB, block_size, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
              for _ in range(4)]  # fmt: skip
    store_kv(k, v, caches[0], caches[1], slots)
    store_kv_ref(k, v, caches[2], caches[3], slots)
    assert torch.equal(caches[0].nan_to_num(7.0), caches[2].nan_to_num(7.0))
    assert torch.equal(caches[1].nan_to_num(7.0), caches[3].nan_to_num(7.0))
    full = torch.randn(NB, block_size, num_kv_heads, head_dim, generator=gen).to(device, dtype)
    ids = torch.tensor([4, 0, 2], device=device)
    # keys beyond float8's range in a few channels: the summaries saturate at +-448
    full[0, 1, 0, :3] = torch.tensor([500.0, -1000.0, 447.0], dtype=dtype)
    dts = [dtype, summary_dtype or dtype, summary_dtype or dtype] * 2
    sums = [torch.zeros(NB, num_kv_heads, head_dim, dtype=dt, device=device) for dt in dts]
    summarize_blocks(full, ids, *sums[:3])
    summarize_blocks_ref(full, ids, *sums[3:])
    bits = lambda t: t.view(torch.uint8) if t.dtype == SUMMARY_FP8 else t  # noqa: E731
    assert torch.equal(bits(sums[1]), bits(sums[4])) and torch.equal(bits(sums[2]), bits(sums[5]))  # min/max exact
    keys = full[ids].float()
    assert (sums[1][ids].float() <= keys.amin(1).clamp(min=-448)).all()  # outward (rounded or exact)
    assert (sums[2][ids].float() >= keys.amax(1).clamp(max=448)).all()
    if summary_dtype == SUMMARY_FP8:
        assert float(sums[2][0, 0, 0]) == 448.0 and float(sums[1][0, 0, 1]) == -448.0  # saturated
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]
    torch.testing.assert_close(sums[0].float(), sums[3].float(), atol=tol, rtol=tol)  # mean: summation order


def check_prefill(
    batch: Batch, knobs: dict, select_config: dict | None = None, attn_config: dict | None = None,
    exact: bool | None = None, remap: Remap | None = None,
):  # fmt: skip
    """Kernel prefill (selection + attention) vs the references; returns (kernel error, bar)."""
    from m3.kernels.msa_prefill import prefill_sparse_rows
    from m3.kernels.msa_select import prefill_select_rows
    from m3.kernels.paged_ref import msa_prefill_select_ref, prefill_qbar_ref
    from m3.kernels.remap import remap_rows, select_remapped

    S, dense_below = knobs["block_size"], knobs["dense_below"]
    qb_seq, qb_ids = prefill_query_blocks(batch.q.shape[0], batch.q_start, batch.seq_lens, S)
    rest = batch.select_args()[4:]
    sel = select_remapped(
        lambda qq, *sums: prefill_select_rows(qq, *sums, *rest, qb_seq, qb_ids, **knobs, config=select_config),
        batch.q, (batch.kmean, batch.kmin, batch.kmax), qb_ids, remap,
    )  # fmt: skip
    o = prefill_sparse_rows(*batch.sparse_args(), sel, qb_seq, qb_ids, dense_below=dense_below, remap=remap,
                            config=attn_config)  # fmt: skip
    # -- selection: same forced blocks, same (or equally heavy) chosen blocks --
    sel_r = msa_prefill_select_ref(*batch.select_args(), **knobs, remap=remap)
    probs = None
    for remapped in (False, True):
        if remapped and remap is None:
            continue
        src, sums = (remap.q_remote, remap[1:4]) if remapped else (batch.q, None)
        qbar = prefill_qbar_ref(src, batch.cu_seqlens_q, batch.q_start, batch.seq_lens, block_size=S,
                                dense_below=dense_below)  # fmt: skip
        p = block_probs(batch, qbar, qb_seq, qb_ids, sink_blocks=knobs["sink_blocks"],
                        window_blocks=knobs["window_blocks"], score=knobs["score"], sums=sums)  # fmt: skip
        probs = p if probs is None else torch.where(remap_rows(qb_ids, remap)[:, None, None], p, probs)
    exact = batch.q.dtype == torch.float32 if exact is None else exact
    check_selection(sel, sel_r, probs, qb_ids, sink_blocks=knobs["sink_blocks"],
                    window_blocks=knobs["window_blocks"], exact=exact)  # fmt: skip
    # -- attention over the kernel's own selection, at the flash-attention bar --
    ref32 = naive_prefill(batch, sel, dense_below, remap=remap)
    lowp = naive_prefill(batch, sel, dense_below, upcast=False, remap=remap)
    return assert_flash_bar(o, ref32, lowp, "prefill")


def check_decode_given_lists(batch: Batch, knobs: dict, remap: Remap | None = None):
    """msa_decode_sparse on page lists from the reference selection (every page read from the list, as for lists
    that do not come from msa_decode_select) vs naive attention over the same lists."""
    from m3.kernels.msa_decode import msa_decode_sparse
    from m3.kernels.paged_ref import msa_decode_select_ref

    pages = msa_decode_select_ref(*batch.decode_select_args(), **knobs, remap=remap)
    db = knobs["dense_below"]
    o = msa_decode_sparse(*batch.decode_sparse_args(), pages.to(batch.q.device), dense_below=db, remap=remap)
    ref32 = naive_decode(batch, pages, remap=remap, dense_below=db)
    lowp = naive_decode(batch, pages, upcast=False, remap=remap, dense_below=db)
    return assert_flash_bar(o, ref32, lowp, "decode given lists")


def check_decode(batch: Batch, knobs: dict, exact: bool | None = None, remap: Remap | None = None):
    """Kernel decode (page lists + split-KV attention) vs the references; returns (kernel error, bar)."""
    from m3.kernels.msa_decode import msa_decode_attention
    from m3.kernels.paged_ref import msa_decode_select_ref, num_selected

    S = knobs["block_size"]
    o, pages = msa_decode_attention(*batch.decode_args(), **knobs, remap=remap, return_sel=True)
    pages_r = msa_decode_select_ref(*batch.decode_select_args(), **knobs, remap=remap)
    assert pages.shape == pages_r.shape
    lens = batch.seq_lens.long()
    is_msa = (lens > 0) & (lens - 1 >= knobs["dense_below"])
    assert torch.equal(pages[~is_msa], pages_r[~is_msa]), "dense / padding page lists differ"
    width = num_selected(knobs["sink_blocks"], knobs["window_blocks"], knobs["topk_blocks"])
    assert (pages[is_msa][..., width:] == -1).all()
    rows = is_msa.nonzero().squeeze(1)
    ids = torch.div(lens[rows] - 1, S, rounding_mode="floor")
    probs = block_probs(batch, batch.q[rows].float(), rows, ids, sink_blocks=knobs["sink_blocks"],
                        window_blocks=knobs["window_blocks"], score=knobs["score"])  # fmt: skip
    if remap is not None:
        far = block_probs(batch, remap.q_remote[rows].float(), rows, ids, sink_blocks=knobs["sink_blocks"],
                          window_blocks=knobs["window_blocks"], score=knobs["score"], sums=remap[1:4])  # fmt: skip
        probs = torch.where((ids >= remap.from_block)[:, None, None], far, probs)
    exact = batch.q.dtype == torch.float32 if exact is None else exact
    check_selection(pages[rows][..., :width], pages_r[rows][..., :width], probs, ids,
                    sink_blocks=knobs["sink_blocks"], window_blocks=knobs["window_blocks"], exact=exact)  # fmt: skip
    db = knobs["dense_below"]
    ref32 = naive_decode(batch, pages, remap=remap, dense_below=db)
    lowp = naive_decode(batch, pages, upcast=False, remap=remap, dense_below=db)
    assert (o[lens <= 0] == 0).all()
    return assert_flash_bar(o, ref32, lowp, "decode")
