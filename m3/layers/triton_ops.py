"""The one switch between the Triton kernels and the plain-torch references: on CUDA when Triton imports, the layers
call the ops of `kernels()`; elsewhere (or without Triton) the references run. Tests run the Triton path on the CPU
in Triton's interpreter by patching `use_kernels`."""

from types import SimpleNamespace

import torch

_KERNELS: SimpleNamespace | None | bool = False  # not looked up yet


def kernels() -> SimpleNamespace | None:
    """The Triton ops as one namespace, or None where Triton is missing."""
    global _KERNELS
    if _KERNELS is False:
        try:
            from m3.kernels.fused import add_rms_norm, rms_norm, rope, silu_mul
            from m3.kernels.kv_cache import store_kv, summarize_blocks
            from m3.kernels.msa_decode import msa_decode_attention
            from m3.kernels.msa_prefill import msa_prefill_attention

            _KERNELS = SimpleNamespace(
                store_kv=store_kv,
                summarize_blocks=summarize_blocks,
                msa_decode_attention=msa_decode_attention,
                msa_prefill_attention=msa_prefill_attention,
                rms_norm=rms_norm,
                add_rms_norm=add_rms_norm,
                rope=rope,
                silu_mul=silu_mul,
            )
        except ImportError:
            _KERNELS = None
    return _KERNELS


def use_kernels(x: torch.Tensor) -> bool:
    """Whether an op on x takes the Triton path: on CUDA when Triton imports."""
    return x.is_cuda and kernels() is not None
