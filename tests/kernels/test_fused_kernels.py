"""The fused element-wise kernels (RMSNorm with the residual add, RoPE, SiLU-gated product) against their references
at the flash-attention bar: in Triton's CPU interpreter (TRITON_INTERPRET=1) and, marked gpu, on a CUDA GPU. Odd
widths (non-power-of-two rows and half head dims), one-row inputs, float32/float16/bfloat16, a float32 weight on a
bfloat16 input (the output promotes as torch's does)."""

import os

import pytest
import torch

pytest.importorskip("triton")
from m3.kernels import fused, fused_ref  # noqa: E402

F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(not INTERPRETED, reason="interpreter tests run without CUDA")),
    pytest.param(
        "cuda",
        marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available() or INTERPRETED, reason="needs CUDA")],
    ),
]


def assert_bar(out: torch.Tensor, ref_lowp: torch.Tensor, ref_f32: torch.Tensor):
    """Kernel error vs the float32 reference <= 2x the reference's own error in the kernel's dtype."""
    assert out.dtype == ref_lowp.dtype and out.shape == ref_lowp.shape
    if out.numel() == 0:
        return
    err = (out.float() - ref_f32).abs().max().item()
    bar = (ref_lowp.float() - ref_f32).abs().max().item()
    assert err <= 2 * bar + 1e-5 * ref_f32.abs().max().item() + 1e-6, (err, bar)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(7, 576), (3, 5, 64), (1, 3584), (4, 100)])
@pytest.mark.parametrize("dtype", [F32, F16, BF16])
@pytest.mark.parametrize("with_delta", [False, True])
def test_rms_norm(device, shape, dtype, with_delta):
    g = torch.Generator().manual_seed(len(shape) * 100 + shape[-1])
    x = (3 * torch.randn(shape, generator=g)).to(device)
    delta = torch.randn(shape, generator=g).to(device)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(device)
    if with_delta:
        h32, ref32 = fused_ref.add_rms_norm_ref(x, delta, w, 1e-6)
        h_lp, ref_lp = fused_ref.add_rms_norm_ref(x.to(dtype), delta.to(dtype), w.to(dtype), 1e-6)
        h, out = fused.add_rms_norm(x.to(dtype), delta.to(dtype), w.to(dtype), 1e-6)
        assert torch.equal(h, h_lp), "the residual stream is the plain sum in the dtype"
    else:
        ref32 = fused_ref.rms_norm_ref(x, w, 1e-6)
        ref_lp = fused_ref.rms_norm_ref(x.to(dtype), w.to(dtype), 1e-6)
        out = fused.rms_norm(x.to(dtype), w.to(dtype), 1e-6)
    assert_bar(out, ref_lp, ref32)


@pytest.mark.parametrize("device", DEVICES)
def test_rms_norm_float32_weight_promotes(device):
    x = torch.randn(5, 96).to(device)
    w = torch.rand(96).to(device) + 0.5
    out = fused.rms_norm(x.to(BF16), w, 1e-5)
    ref = fused_ref.rms_norm_ref(x.to(BF16), w, 1e-5)
    assert out.dtype == ref.dtype == F32
    assert (out - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(9, 5, 64), (1, 28, 128), (6, 3, 80), (0, 4, 64)])
@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_rope(device, shape, dtype):
    num_tokens, _, head_dim = shape
    g = torch.Generator().manual_seed(head_dim)
    x = torch.randn(shape, generator=g).to(device)
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.randint(0, 1 << 20, (num_tokens,), generator=g).double()[:, None] * inv_freq
    angles = torch.cat((angles, angles), -1)
    cos, sin = angles.cos().float().to(device), angles.sin().float().to(device)
    out = fused.rope(x.to(dtype), cos, sin)
    assert_bar(out, fused_ref.rope_ref(x.to(dtype), cos, sin), fused_ref.rope_ref(x, cos, sin))
    if dtype == F32 and device == "cpu":  # products and sums round as torch's separate ops do
        assert torch.equal(out, fused_ref.rope_ref(x, cos, sin))
    if num_tokens > 0:  # one angle for every token (remap's remote query): cos/sin broadcast with row stride 0
        c1, s1 = cos[:1].expand(num_tokens, -1), sin[:1].expand(num_tokens, -1)
        out = fused.rope(x.to(dtype), c1, s1)
        assert_bar(out, fused_ref.rope_ref(x.to(dtype), c1, s1), fused_ref.rope_ref(x, c1, s1))
        assert torch.equal(out, fused.rope(x.to(dtype), c1.contiguous(), s1.contiguous()))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(5, 1000), (1, 18944), (3, 7)])
@pytest.mark.parametrize("dtype", [F32, F16, BF16])
def test_silu_mul(device, shape, dtype):
    g = torch.Generator().manual_seed(shape[-1])
    gate, up = (4 * torch.randn(shape, generator=g)).to(device), torch.randn(shape, generator=g).to(device)
    out = fused.silu_mul(gate.to(dtype), up.to(dtype))
    assert_bar(out, fused_ref.silu_mul_ref(gate.to(dtype), up.to(dtype)), fused_ref.silu_mul_ref(gate, up))
