"""RMSNorm computed in float32, as Llama/Qwen/Mistral do; `add` fuses the residual add before it (one Triton pass
on CUDA, fused.py; the references of fused_ref.py elsewhere)."""

import torch

from m3.kernels.fused_ref import add_rms_norm_ref, rms_norm_ref
from m3.layers import triton_ops


class RMSNorm(torch.nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if triton_ops.use_kernels(x):
            return triton_ops.kernels().rms_norm(x, self.weight, self.eps)
        return rms_norm_ref(x, self.weight, self.eps)

    def add(self, x: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream x + delta and its norm."""
        if triton_ops.use_kernels(x):
            return triton_ops.kernels().add_rms_norm(x, delta, self.weight, self.eps)
        return add_rms_norm_ref(x, delta, self.weight, self.eps)
