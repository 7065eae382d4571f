"""Inputs of remapped positions (msa.md "Positions") for the batched MSA ops, Triton and reference alike.

Under remap, a query block i >= from_block scores its remote blocks (selected blocks before the window: sinks and
top-k) with q_remote, its queries rotated at the fixed angle window_blocks * S, against keys with RoPE undone, and
selects them with summaries of un-rotated keys. Keys sit in the cache post-RoPE, so the kernels undo the rotation of
a remote page on the fly. The angle of the key at position p = j * S + s is split into a page part (j * S) and an
offset part (s), each from a small float32 table built in float64: cos/sin of p follow from two products, with no
trigonometry in the kernel and no per-position table (a 1M-token one would be 512 MB).
"""

from typing import NamedTuple

import torch


class Remap(NamedTuple):
    q_remote: torch.Tensor  # (T, H, D) (prefill) or (B, H, D) (decode): queries rotated at window_blocks * S
    kmean: torch.Tensor  # (NB, Hkv, D) summaries of un-rotated keys
    kmin: torch.Tensor | None
    kmax: torch.Tensor | None
    cos_page: torch.Tensor  # (P, D/2) float32: cos(j * S * inv_freq), P >= max blocks of a sequence
    sin_page: torch.Tensor
    cos_off: torch.Tensor  # (S, D/2) float32: cos(s * inv_freq)
    sin_off: torch.Tensor
    window_blocks: int  # remote = selected blocks j < i - window_blocks; q_remote's angle is window_blocks * S
    from_block: int  # query blocks i >= from_block use remapped positions; 0 = all


def rope_tables(inv_freq: torch.Tensor, num_pages: int, block_size: int, device) -> tuple[torch.Tensor, ...]:
    """(cos_page, sin_page (num_pages, D/2), cos_off, sin_off (S, D/2)) float32, angles in float64."""
    inv = inv_freq.to(device=device, dtype=torch.float64)
    page = torch.arange(num_pages, device=device, dtype=torch.float64)[:, None] * (block_size * inv)
    off = torch.arange(block_size, device=device, dtype=torch.float64)[:, None] * inv
    return tuple(x.float().contiguous() for x in (page.cos(), page.sin(), off.cos(), off.sin()))


def key_cos_sin(remap: Remap, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin (..., D) of the keys at `positions`, composed from the tables exactly as the kernels do."""
    block_size = remap.cos_off.shape[0]
    j, s = torch.div(positions, block_size, rounding_mode="floor").long(), (positions % block_size).long()
    cp, sp, co, so = remap.cos_page[j], remap.sin_page[j], remap.cos_off[s], remap.sin_off[s]
    cos, sin = cp * co - sp * so, sp * co + cp * so
    return torch.cat((cos, cos), -1), torch.cat((sin, sin), -1)


def remap_rows(qblock_ids: torch.Tensor, remap: Remap | None) -> torch.Tensor:
    """(Q,) bool: which query blocks use remapped positions."""
    if remap is None:
        return torch.zeros_like(qblock_ids, dtype=torch.bool)
    return qblock_ids >= remap.from_block


def remap_inputs(remap: Remap | None, q: torch.Tensor, block_size: int):
    """(q_remote, (cos_page, sin_page, cos_off, sin_off), remap_from, window_blocks) for a kernel launch; without
    remap, placeholders the kernel never reads."""
    if remap is None:
        return q, (q, q, q, q), 1 << 30, 0
    head_dim = q.shape[-1]
    assert head_dim & (head_dim - 1) == 0 and head_dim >= 32, "remap needs a power-of-two head_dim >= 32"
    qr = remap.q_remote
    assert qr.shape == q.shape and qr.dtype == q.dtype and qr.stride(-1) == 1
    tables = (remap.cos_page, remap.sin_page, remap.cos_off, remap.sin_off)
    assert remap.cos_off.shape == (block_size, head_dim // 2) and remap.cos_page.shape[1] == head_dim // 2
    assert all(t.dtype == torch.float32 and t.is_contiguous() and t.device == q.device for t in tables)
    return qr, tables, remap.from_block, remap.window_blocks


def select_remapped(select, q: torch.Tensor, sums: tuple, row_blocks: torch.Tensor, remap: Remap | None):
    """Selection rows with remapped positions: rows whose query block (row_blocks) is >= remap.from_block take
    select(q_remote, raw summaries), the others select(q, summaries). select(q, kmean, kmin, kmax) -> rows."""
    if remap is None:
        return select(q, *sums)
    far = select(remap.q_remote, remap.kmean, remap.kmin, remap.kmax)
    if remap.from_block <= 0:
        return far
    near = select(q, *sums)
    return torch.where((row_blocks >= remap.from_block)[:, None, None], far, near)
