"""Kernel tests: without CUDA, run Triton kernels in its CPU interpreter (TRITON_INTERPRET=1, set before triton is
imported, since @triton.jit reads it when a kernel module is imported).

Three test-only patches to the interpreter (not to our kernels): its tl.dot multiplies bfloat16 operands as raw uint16
bits (so bf16 kernels would be garbage on CPU), its float32 -> bfloat16 cast truncates where GPUs round to nearest
even, and its xor-reduction, which tl.sort uses, falls back to a per-element Python loop (minutes per sort). Each is
replaced by the numpy equivalent.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _patch_interpreter():
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    builder = interpreter.InterpreterBuilder
    if getattr(builder, "_m3_patched", False):
        return
    create_dot = builder.create_dot

    def _as_f32(x):
        if x.dtype.scalar == tl.bfloat16:
            data = (x.data.astype(np.uint32) << 16).view(np.float32)
            return interpreter.TensorHandle(data, tl.float32)
        return x

    def patched_dot(self, a, b, d, *args):
        return create_dot(self, _as_f32(a), _as_f32(b), d, *args)

    builder.create_dot = patched_dot
    cast_impl = builder.cast_impl

    def patched_cast(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            # round to nearest even (the interpreter truncates; GPUs round), NaN kept NaN
            bits = np.asarray(src.data, dtype=np.float32).view(np.uint32).astype(np.uint64)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
            nan = np.isnan(np.asarray(src.data, dtype=np.float32))
            data = np.where(nan, (bits >> 16).astype(np.uint16) | 0x40, rounded)
            return interpreter.TensorHandle(data, dst_type.scalar)
        return cast_impl(self, src, dst_type)

    builder.cast_impl = patched_cast
    reduce_ops = getattr(interpreter, "ReduceOps", None)
    xor = getattr(tl.standard, "_xor_combine", None)
    if reduce_ops is not None and xor is not None:
        apply_impl = reduce_ops.apply_impl

        def patched_apply(self, input):
            if self.combine_fn is xor:
                x = input[0]
                data = np.bitwise_xor.reduce(x.handle.data, axis=self.axis, keepdims=self.keep_dims)
                return self.to_tensor(data, x.dtype)
            return apply_impl(self, input)

        reduce_ops.apply_impl = patched_apply
    builder._m3_patched = True


if os.environ.get("TRITON_INTERPRET") == "1":
    _patch_interpreter()


from tests.fixtures import tiny_model_dir_d32  # noqa: E402, F401
