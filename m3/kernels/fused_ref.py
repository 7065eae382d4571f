"""Reference element-wise ops of a decoder layer: RMSNorm (with the residual add before it), RoPE, SiLU-gated product.

The executable spec of fused.py (same signatures) and the path every non-CUDA device runs. Rounding follows the
model's dtype step by step as Llama/Qwen/Mistral do (norm in float32, then back to the dtype before the weight).
"""

import torch

from m3.kernels.kv_cache_ref import rope


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., N), weight (N,) -> weight * (x / rms(x)), the norm computed in float32."""
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


def add_rms_norm_ref(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream and its norm: h = x + delta (in x's dtype), returns (h, rms_norm(h))."""
    h = x + delta
    return h, rms_norm_ref(h, weight, eps)


def rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, heads, D) rotated at angles cos/sin (T, D) float32 (HF "rotate_half" layout), computed in float32."""
    return rope(x.float(), cos[:, None, :], sin[:, None, :]).to(x.dtype)


def silu_mul_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, each op rounded to the dtype as torch does."""
    return torch.nn.functional.silu(gate) * up
