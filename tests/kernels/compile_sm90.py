"""Compile, for sm_90 and without a GPU, every Triton kernel variant the launchers launch for a set of real shapes.

The interpreter runs kernels as Python, so it accepts code the Triton compiler rejects (tuple unpacking into a
@triton.jit call did once). Here each launch is intercepted: its signature and constexprs are derived from the
arguments and the kernel is compiled ahead of time (triton.compile, ptxas from the triton wheel) instead of run.
Run as a script (TRITON_INTERPRET unset); prints one line per variant and `compiled N, failed M` last.
"""

import os
import sys

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

sys.path.insert(0, os.path.dirname(__file__))
from msa_cases import make_batch, make_remap  # noqa: E402

TYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.float8_e4m3fn: "fp8e4nv",
}
SEEN: dict[tuple, bool] = {}


def _compile_instead_of_run(self, *args, grid, warmup, **kwargs):
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages", "enable_fp_fusion") if k in kwargs}
    bound = dict(zip(self.arg_names, args)) | kwargs
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(self.params):
        value = bound[param.name]
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
            continue
        if isinstance(value, torch.Tensor):
            signature[param.name] = "*" + TYPES[value.dtype]
            aligned = value.data_ptr() % 16 == 0
        elif isinstance(value, float):
            signature[param.name], aligned = "fp32", False
        else:
            signature[param.name] = "i64" if abs(int(value)) >= 2**31 else "i32"
            aligned = int(value) % 16 == 0
        if aligned:  # as the JIT specialises: pointers and integers divisible by 16 (vectorised loads follow from it)
            attrs[(i,)] = [["tt.divisibility", 16]]
    key = (
        self.fn.__name__,
        tuple(sorted((k, repr(v)) for k, v in constexprs.items())),
        str(options),
        tuple(sorted(signature.items())),
    )
    if key in SEEN:
        return None
    try:
        triton.compile(ASTSource(self, signature, constexprs, attrs), target=GPUTarget("cuda", 90, 32), options=options)
        SEEN[key] = True
        print("ok    ", self.fn.__name__, options, flush=True)
    except Exception as e:  # noqa: BLE001
        SEEN[key] = False
        print("FAILED", self.fn.__name__, options, str(e)[:2000], flush=True)
    return None


def main():
    JITFunction.run = _compile_instead_of_run
    from m3.kernels.fused import add_rms_norm, rms_norm, rope, silu_mul
    from m3.kernels.kv_cache import store_kv, summarize_blocks
    from m3.kernels.msa_decode import msa_decode_attention, msa_decode_sparse
    from m3.kernels.msa_prefill import msa_prefill_attention

    bf16 = torch.bfloat16
    knobs = dict(block_size=64, sink_blocks=1, window_blocks=16, topk_blocks=32, score="bound", dense_below=256)
    specs = [(0, 1000), (512, 300), (3000, 1)]
    decode_specs = [(20000, 1), (0, 0), (64, 1), (4999, 1)]
    for group, head_dim, dtype in ((4, 128, bf16), (3, 64, torch.float16), (8, 128, bf16), (1, 128, torch.float32)):
        b = make_batch(specs, num_kv_heads=2, group=group, head_dim=head_dim, block_size=64, dtype=dtype)
        msa_prefill_attention(*b.attention_args(), **knobs)
        msa_prefill_attention(*b.attention_args(), **{**knobs, "score": "mean", "topk_blocks": 0})
        d = make_batch(decode_specs, num_kv_heads=2, group=group, head_dim=head_dim, block_size=64, dtype=dtype,
                       decode=True)  # fmt: skip
        msa_decode_attention(*d.decode_args(), **knobs)
        if dtype == bf16:  # min/max in the cache dtype (accepted beside the engine's float8)
            c = make_batch(specs, num_kv_heads=2, group=group, head_dim=head_dim, block_size=64, dtype=dtype,
                           summary_dtype=None)  # fmt: skip
            msa_prefill_attention(*c.attention_args(), **knobs)
            c = make_batch(decode_specs, num_kv_heads=2, group=group, head_dim=head_dim, block_size=64, dtype=dtype,
                           decode=True, summary_dtype=None)  # fmt: skip
            msa_decode_attention(*c.decode_args(), **knobs)
        msa_decode_attention(*d.decode_args(), **{**knobs, "topk_blocks": 0, "dense_below": 1 << 30})
        lists = torch.full((d.q.shape[0], 2, 50), -1, dtype=torch.int32)  # any lists: every page read from them
        msa_decode_sparse(*d.decode_sparse_args(), lists, dense_below=256)
        if dtype != torch.float32:
            msa_prefill_attention(*b.attention_args(), **knobs, remap=make_remap(b, window_blocks=16, from_block=2))
            remap = make_remap(d, window_blocks=16, from_block=0, decode=True)
            msa_decode_attention(*d.decode_args(), **knobs, remap=remap)
        k = torch.randn(10, 2, head_dim, dtype=dtype)
        cache = torch.zeros(4, 64, 2, head_dim, dtype=dtype)
        store_kv(k, k, cache, cache, torch.arange(10))
        for sum_dtype in (dtype, torch.float8_e4m3fn):
            sums = [torch.zeros(4, 2, head_dim, dtype=dt) for dt in (dtype, sum_dtype, sum_dtype)]
            summarize_blocks(cache, torch.arange(2), *sums)
    for dtype in (bf16, torch.float16, torch.float32):
        x = torch.randn(3, 3584, dtype=dtype)
        rms_norm(x, torch.ones(3584, dtype=dtype), 1e-6)
        add_rms_norm(x, x, torch.ones(3584, dtype=dtype), 1e-6)
        rope(torch.randn(2, 28, 128, dtype=dtype), torch.ones(2, 128), torch.zeros(2, 128))
        silu_mul(x, x)
    failed = sum(not ok for ok in SEEN.values())
    print(f"compiled {len(SEEN) - failed}, failed {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
