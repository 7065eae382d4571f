"""Rotary position embedding (HF "rotate_half" layout), with Llama-3 and linear rope scaling.

cos/sin are computed per step from the positions instead of a table, so 1M-token positions cost no memory.
"""

import math

import torch

from m3.kernels.fused_ref import rope_ref
from m3.kernels.remap import rope_tables
from m3.layers import triton_ops


class RotaryEmbedding(torch.nn.Module):
    def __init__(self, head_dim: int, rope_theta: float, rope_scaling: dict | None = None):
        super().__init__()
        inv_freq = 1.0 / (rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device="cpu") / head_dim))
        inv_freq = _scale_inv_freq(inv_freq, rope_scaling)
        # NOTE: a plain attribute, not a buffer: models are built on the meta device and must keep this exact value.
        self.inv_freq = inv_freq  # (D/2,) float64
        self._last_positions: torch.Tensor | None = None
        self._last_cos_sin: tuple[torch.Tensor, torch.Tensor] | None = None
        self._page_tables: tuple[torch.Tensor, ...] | None = None
        self._fixed: tuple | None = None  # ((distance, device), (cos, sin)) of at_distance

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (...,) -> cos, sin (..., D) in float32 (angles in float64: exact at 1M positions)."""
        if self.inv_freq.device != positions.device:
            self.inv_freq = self.inv_freq.to(positions.device)
        angles = positions.to(torch.float64)[..., None] * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().float(), angles.sin().float()

    def page_tables(self, num_pages: int, block_size: int, device) -> tuple[torch.Tensor, ...]:
        """Remap's key-angle tables (m3/kernels/remap.py) for at least num_pages pages; grown, never shrunk."""
        t = self._page_tables
        if t is None or t[0].shape[0] < num_pages or t[2].shape[0] != block_size or t[0].device != torch.device(device):
            size = max(num_pages, 2 * t[0].shape[0] if t is not None else 0)
            self._page_tables = rope_tables(self.inv_freq, size, block_size, device)
        return self._page_tables

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (T, heads, D), positions: (T,) -> x rotated, same dtype."""
        # NOTE: every layer rotates q and k at the same positions tensor: compute its angles once per step
        if positions is not self._last_positions:
            self._last_positions, self._last_cos_sin = positions, self.cos_sin(positions)
        return self._rotate(x, *self._last_cos_sin)

    def at_distance(self, x: torch.Tensor, distance: int) -> torch.Tensor:
        """x: (T, heads, D) -> every token rotated by the one angle of `distance` positions (remap's remote query,
        msa.md); the angle is computed once per distance, shared by every layer and step."""
        key = (distance, x.device)
        if self._fixed is None or self._fixed[0] != key:
            self._fixed = (key, self.cos_sin(torch.full((1,), distance, device=x.device)))
        cos, sin = self._fixed[1]
        return self._rotate(x, cos.expand(x.shape[0], -1), sin.expand(x.shape[0], -1))

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if triton_ops.use_kernels(x):
            return triton_ops.kernels().rope(x, cos, sin)
        return rope_ref(x, cos, sin)


def _scale_inv_freq(inv_freq: torch.Tensor, scaling: dict | None) -> torch.Tensor:
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
        old_len = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(is_mid, mid, scaled)
    raise ValueError(f"unsupported rope_scaling type {kind!r}; supported: default, linear, llama3")
