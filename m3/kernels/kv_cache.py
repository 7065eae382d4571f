"""Triton KV-cache writes: new K/V rows into the paged cache by slot mapping, and the per-block key summaries.

Twins of kv_cache_ref.py (same signatures). One program per token row for the write and one per (block, KV head) for
the summaries; both are copies at memory speed. Summaries of un-rotated keys (remap) are written by the layer with
the torch reference (summarize_blocks_ref with unrotate=), on any device. Min/max summaries in float8 are rounded
outward (_round_outward_fp8, the same arithmetic as the reference), so kernel and reference agree bit for bit.
"""

import torch
import triton
import triton.language as tl

from m3.kernels.kv_cache_ref import SUMMARY_FP8


@triton.jit
def _store_kv_kernel(
    K, V, K_CACHE, V_CACHE, SLOTS,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    num_kv_heads, head_dim,
    S: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0)
    slot = tl.load(SLOTS + t)
    if slot < 0:
        return
    # NOTE: int64 offsets: a 1M-token cache passes 2^31 elements
    blk = (slot // S).to(tl.int64)
    off = slot % S
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h[:, None] < num_kv_heads) & (d[None, :] < head_dim)
    t64 = t.to(tl.int64)
    k = tl.load(K + t64 * stride_kt + h[:, None] * stride_kh + d[None, :], mask=mask)
    v = tl.load(V + t64 * stride_vt + h[:, None] * stride_vh + d[None, :], mask=mask)
    kc = K_CACHE + blk * stride_kcb + off * stride_kcs + h[:, None] * stride_kch + d[None, :]
    vc = V_CACHE + blk * stride_vcb + off * stride_vcs + h[:, None] * stride_vch + d[None, :]
    tl.store(kc, k.to(K_CACHE.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(V_CACHE.dtype.element_ty), mask=mask)


def store_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
):
    """k, v: (T, Hkv, D) new rows into k_cache, v_cache: (NB, S, Hkv, D) at slot_mapping: (T,) block * S + offset,
    -1 = skip."""
    num_tokens, num_kv_heads, head_dim = k.shape
    assert v.shape == k.shape and slot_mapping.shape == (num_tokens,)
    assert k_cache.shape == v_cache.shape and k_cache.shape[2:] == (num_kv_heads, head_dim)
    assert k.stride(-1) == v.stride(-1) == k_cache.stride(-1) == v_cache.stride(-1) == 1
    assert slot_mapping.dtype in (torch.int32, torch.int64)
    if num_tokens == 0:
        return
    _store_kv_kernel[(num_tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        *k_cache.stride()[:3], *v_cache.stride()[:3],
        num_kv_heads, head_dim,
        S=k_cache.shape[1], BLOCK_H=triton.next_power_of_2(num_kv_heads), BLOCK_D=triton.next_power_of_2(head_dim),
    )  # fmt: skip


@triton.jit
def _round_outward_fp8(x, UP: tl.constexpr):
    """kv_cache_ref.round_outward_fp8: float32 x to the float8 e4m3 grid toward +inf (UP) or -inf, saturating at 448;
    the result is exact in float8, so the final cast does not round."""
    exp = ((x.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    step_exp = tl.maximum(exp, -6) - 3
    step = ((step_exp + 127) << 23).to(tl.float32, bitcast=True)  # 2^step_exp (normal for these exponents)
    inv = ((127 - step_exp) << 23).to(tl.float32, bitcast=True)
    scaled = x * inv
    r = (tl.math.ceil(scaled) if UP else tl.math.floor(scaled)) * step
    return tl.minimum(tl.maximum(r, -448.0), 448.0)


@triton.jit
def _summarize_kernel(
    K_CACHE, BLOCK_IDS, KMEAN, KMIN, KMAX,
    stride_kb, stride_ks, stride_kh, stride_mb, stride_mh,
    head_dim,
    S: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    m = tl.program_id(0)
    h = tl.program_id(1)
    blk = tl.load(BLOCK_IDS + m).to(tl.int64)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    mask = (s[:, None] < S) & (d[None, :] < head_dim)
    keys = tl.load(
        K_CACHE + blk * stride_kb + s[:, None] * stride_ks + h * stride_kh + d[None, :], mask=mask, other=0.0
    )
    keys = keys.to(tl.float32)  # (S, D)
    # -- mean / min / max over the block's tokens, in float32 like the reference --
    mean = tl.sum(keys, axis=0) / S
    kmin = tl.min(tl.where(mask, keys, float("inf")), axis=0)
    kmax = tl.max(tl.where(mask, keys, float("-inf")), axis=0)
    out = blk * stride_mb + h * stride_mh + d
    dmask = d < head_dim
    tl.store(KMEAN + out, mean.to(KMEAN.dtype.element_ty), mask=dmask)
    if KMIN.dtype.element_ty == tl.float8e4nv:  # (msa.md: min/max in float8, rounded outward)
        kmin = _round_outward_fp8(kmin, False)
        kmax = _round_outward_fp8(kmax, True)
    tl.store(KMIN + out, kmin.to(KMIN.dtype.element_ty), mask=dmask)
    tl.store(KMAX + out, kmax.to(KMAX.dtype.element_ty), mask=dmask)


def summarize_blocks(
    k_cache: torch.Tensor,
    block_ids: torch.Tensor,
    kmean: torch.Tensor,
    kmin: torch.Tensor,
    kmax: torch.Tensor,
    unrotate: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Write mean/min/max of the keys of full blocks `block_ids` (M,) into the summaries (NB, Hkv, D)."""
    assert unrotate is None, "summaries of un-rotated keys (remap): use kv_cache_ref.summarize_blocks_ref"
    num_blocks, block_size, num_kv_heads, head_dim = k_cache.shape
    assert kmean.shape == kmin.shape == kmax.shape == (num_blocks, num_kv_heads, head_dim)
    assert kmin.dtype == kmax.dtype and kmin.dtype in (SUMMARY_FP8, kmean.dtype)
    assert kmean.stride() == kmin.stride() == kmax.stride() and kmean.stride(-1) == 1 and k_cache.stride(-1) == 1
    assert block_ids.dim() == 1 and block_ids.dtype in (torch.int32, torch.int64)
    if block_ids.numel() == 0:
        return
    _summarize_kernel[(block_ids.numel(), num_kv_heads)](
        k_cache, block_ids, kmean, kmin, kmax,
        *k_cache.stride()[:3], kmean.stride(0), kmean.stride(1),
        head_dim,
        S=block_size, BLOCK_S=triton.next_power_of_2(block_size), BLOCK_D=triton.next_power_of_2(head_dim),
    )  # fmt: skip
