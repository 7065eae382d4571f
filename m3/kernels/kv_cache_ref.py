"""Reference KV-cache writes: new K/V rows into the paged cache, and the per-block key summaries of msa.md.

Cache layout (per layer): k_cache, v_cache (NB, S, Hkv, D); summaries kmean, kmin, kmax (NB, Hkv, D): kmean in the
cache dtype, kmin/kmax in float8 e4m3 rounded outward (msa.md "Block summaries"; any float dtype is accepted).
"""

import torch

SUMMARY_FP8 = torch.float8_e4m3fn  # kmin/kmax storage (msa.md)
FP8_MAX = 448.0  # e4m3's largest finite value: summaries saturate there


def summary_tensors(num_blocks: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype, device) -> tuple:
    """Zeroed (kmean, kmin, kmax), each (NB, Hkv, D): kmean in `dtype` (the cache's), kmin/kmax in float8 e4m3."""
    shape = (num_blocks, num_kv_heads, head_dim)
    return (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=SUMMARY_FP8, device=device),
            torch.zeros(shape, dtype=SUMMARY_FP8, device=device))  # fmt: skip


def round_outward_fp8(x: torch.Tensor, up: bool) -> torch.Tensor:
    """x rounded to the float8 e4m3 grid toward +inf (up) or -inf, saturating at +-448, as float32 (exact in float8).

    Outward rounding keeps the bound score an upper bound (msa.md); beyond +-448 it saturates and the bound is then
    not an upper bound in that channel. The grid step of |x| in [2^e, 2^(e+1)) is 2^(e-3) (3 mantissa bits), and
    2^-9 below 2^-6 (subnormals). Same arithmetic as the Triton twin (kv_cache._round_outward_fp8)."""
    x = x.float()
    bits = x.view(torch.int32)
    exp = ((bits >> 23) & 0xFF) - 127  # floor(log2|x|) for normal floats; -127 for 0 and subnormals
    step_exp = torch.clamp(exp, min=-6) - 3
    scaled = torch.ldexp(x, -step_exp)
    r = torch.ldexp(torch.ceil(scaled) if up else torch.floor(scaled), step_exp)
    return r.clamp(-FP8_MAX, FP8_MAX)


def store_kv_ref(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
):
    """k, v: (T, Hkv, D); slot_mapping: (T,) flat slot = block * S + offset, -1 = skip."""
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    k_cache.view(-1, *k_cache.shape[2:])[slots] = k[keep].to(k_cache.dtype)
    v_cache.view(-1, *v_cache.shape[2:])[slots] = v[keep].to(v_cache.dtype)


def summarize_blocks_ref(
    k_cache: torch.Tensor,
    block_ids: torch.Tensor,
    kmean: torch.Tensor,
    kmin: torch.Tensor,
    kmax: torch.Tensor,
    unrotate: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Write mean/min/max of the keys of full blocks `block_ids` (M,) into the summaries (NB, Hkv, D).

    unrotate: (cos, sin) of shape (M, S, D) at each key's true position: summarise the keys with RoPE undone
    (for remap-mode scoring, msa.md "Positions").
    """
    if block_ids.numel() == 0:
        return
    keys = k_cache[block_ids].float()  # (M, S, Hkv, D)
    if unrotate is not None:
        cos, sin = unrotate
        keys = unrope(keys, cos[:, :, None, :], sin[:, :, None, :])
    kmean[block_ids] = keys.mean(dim=1).to(kmean.dtype)
    lo, hi = keys.amin(dim=1), keys.amax(dim=1)
    if kmin.dtype == SUMMARY_FP8:
        lo, hi = round_outward_fp8(lo, up=False), round_outward_fp8(hi, up=True)
    kmin[block_ids] = lo.to(kmin.dtype)
    kmax[block_ids] = hi.to(kmax.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x by the angles whose cos/sin are given (HF "rotate_half" layout, D = full head dim)."""
    return x * cos + rotate_half(x) * sin


def unrope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of rope() at the same angles."""
    return x * cos - rotate_half(x) * sin
