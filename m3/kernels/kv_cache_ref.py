"""Reference KV-cache writes: new K/V rows into the paged cache, and the per-block key summaries of msa.md.

Cache layout (per layer): k_cache, v_cache (NB, S, Hkv, D); summaries kmean, kmin, kmax (NB, Hkv, D).
"""

import torch


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
    kmin[block_ids] = keys.amin(dim=1).to(kmin.dtype)
    kmax[block_ids] = keys.amax(dim=1).to(kmax.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x by the angles whose cos/sin are given (HF "rotate_half" layout, D = full head dim)."""
    return x * cos + rotate_half(x) * sin


def unrope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Inverse of rope() at the same angles."""
    return x * cos - rotate_half(x) * sin
