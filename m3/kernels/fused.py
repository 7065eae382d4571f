"""Triton element-wise ops of a decoder layer, each one launch instead of the 3-7 small kernels of its torch form.

Twins of fused_ref.py (same signatures). RMSNorm optionally adds the residual first and writes the new residual
stream in the same pass (one program per row); RoPE rotates every head of a token in one program, without FMA
contraction so each product and sum rounds as torch's separate ops do; the SiLU-gated product is one flat pass.
Decode steps are made of these small kernels between the weight-bound GEMMs (benchmarks/e2e_gpu.py --profile).
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _rms_norm_kernel(
    X, DELTA, H, Y, W,
    stride_x, stride_d, stride_h, stride_y,
    n, eps,
    HAS_DELTA: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    r = tl.program_id(0).to(tl.int64)
    c = tl.arange(0, BLOCK_N)
    m = c < n
    x = tl.load(X + r * stride_x + c, mask=m, other=0.0)
    if HAS_DELTA:
        # -- the residual stream, rounded to its dtype before the norm reads it --
        d = tl.load(DELTA + r * stride_d + c, mask=m, other=0.0)
        x = (x.to(tl.float32) + d.to(tl.float32)).to(X.dtype.element_ty)
        tl.store(H + r * stride_h + c, x, mask=m)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / n + eps)
    y = (xf * rstd).to(X.dtype.element_ty)
    w = tl.load(W + c, mask=m, other=0.0)
    tl.store(Y + r * stride_y + c, (w.to(tl.float32) * y.to(tl.float32)).to(Y.dtype.element_ty), mask=m)


def _rms_norm(x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float):
    n = x.shape[-1]
    assert weight.shape == (n,) and weight.is_contiguous() and x.stride(-1) == 1
    x2 = x.reshape(-1, n)  # (R, N)
    y = torch.empty(x2.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    h = None
    if delta is not None:
        assert delta.shape == x.shape and delta.dtype == x.dtype
        d2 = delta.reshape(-1, n)
        h = torch.empty_like(x2)
    if x2.shape[0] > 0:
        block_n = triton.next_power_of_2(n)
        _rms_norm_kernel[(x2.shape[0],)](
            x2, d2 if h is not None else x2, h if h is not None else x2, y, weight,
            x2.stride(0), d2.stride(0) if h is not None else 0, h.stride(0) if h is not None else 0, y.stride(0),
            n, eps,
            HAS_DELTA=h is not None, BLOCK_N=block_n, num_warps=min(16, max(1, block_n // 256)),
        )  # fmt: skip
    y = y.view(*x.shape[:-1], n)
    return y if h is None else (h.view(x.shape), y)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., N) with unit stride in N, weight (N,) -> weight * (x / rms(x)), the norm in float32."""
    return _rms_norm(x, None, weight, eps)


def add_rms_norm(
    x: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream and its norm in one pass: h = x + delta (x's dtype), returns (h, rms_norm(h))."""
    return _rms_norm(x, delta, weight, eps)


@triton.jit
def _rope_kernel(
    X, COS, SIN, OUT,
    stride_xt, stride_xh, stride_ot, stride_oh, stride_ct, stride_st,
    num_heads, half,
    BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0).to(tl.int64)
    hh = tl.arange(0, BLOCK_H)[:, None]
    e = tl.arange(0, BLOCK_E)[None, :]
    m = (hh < num_heads) & (e < half)
    x_ptr = X + t * stride_xt + hh * stride_xh + e
    xa = tl.load(x_ptr, mask=m, other=0.0).to(tl.float32)
    xb = tl.load(x_ptr + half, mask=m, other=0.0).to(tl.float32)
    em = e < half
    c1 = tl.load(COS + t * stride_ct + e, mask=em, other=0.0)
    c2 = tl.load(COS + t * stride_ct + half + e, mask=em, other=0.0)
    s1 = tl.load(SIN + t * stride_st + e, mask=em, other=0.0)
    s2 = tl.load(SIN + t * stride_st + half + e, mask=em, other=0.0)
    # -- x * cos + rotate_half(x) * sin, rotate_half(x) = (-x2, x1) --
    o_ptr = OUT + t * stride_ot + hh * stride_oh + e
    tl.store(o_ptr, (xa * c1 + (-xb) * s1).to(OUT.dtype.element_ty), mask=m)
    tl.store(o_ptr + half, (xb * c2 + xa * s2).to(OUT.dtype.element_ty), mask=m)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (T, heads, D) rotated at angles cos/sin (T, D) float32 (HF "rotate_half" layout); returns x's dtype."""
    num_tokens, num_heads, head_dim = x.shape
    assert head_dim % 2 == 0 and x.stride(-1) == 1
    assert cos.shape == sin.shape == (num_tokens, head_dim) and cos.dtype == sin.dtype == torch.float32
    assert cos.stride(-1) == sin.stride(-1) == 1
    out = torch.empty_like(x)
    if num_tokens > 0:
        _rope_kernel[(num_tokens,)](
            x, cos, sin, out,
            x.stride(0), x.stride(1), out.stride(0), out.stride(1), cos.stride(0), sin.stride(0),
            num_heads, head_dim // 2,
            BLOCK_H=triton.next_power_of_2(num_heads), BLOCK_E=triton.next_power_of_2(head_dim // 2),
            enable_fp_fusion=False,
        )  # fmt: skip
    return out


@triton.jit
def _silu_mul_kernel(G, U, OUT, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    g = tl.load(G + i, mask=m, other=0.0).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(G.dtype.element_ty)
    u = tl.load(U + i, mask=m, other=0.0)
    tl.store(OUT + i, (s.to(tl.float32) * u.to(tl.float32)).to(OUT.dtype.element_ty), mask=m)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for contiguous gate, up of one shape and dtype."""
    assert gate.shape == up.shape and gate.dtype == up.dtype and gate.is_contiguous() and up.is_contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    if n > 0:
        block = 2048
        _silu_mul_kernel[(triton.cdiv(n, block),)](gate, up, out, n, BLOCK=block, num_warps=8)
    return out
