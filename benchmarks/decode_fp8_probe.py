"""A/B: MSA decode per layer with the min/max block summaries in float8 e4m3 rounded outward (msa.md since session 8,
what the engine stores) against the same values held in bf16 (the contract before), on the GPU. The scoring kernel
reads every summary (64 MB at 1M in bf16, 32 MB in float8); float8 summaries are scored with float16 operands.
Quality of the rounding: `benchmarks/msa_recall.py --scores bound,bound_exact`.

Each case runs the step twice from CUDA graphs; page lists must be equal and outputs equal. Llama-3.1-8B attention
shapes (kernels.py). (Session 7 ran it as a probe before the engine stored float8 summaries; then float8 was scored
with bfloat16 operands, which the conversion made slow.)
    python benchmarks/decode_fp8_probe.py --out F [--cases 1048576x1,131072x8,131072x32]
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import write_record  # noqa: E402
from kernels import KNOBS, decode_inputs, kernel_breakdown, l2_flusher, timeit  # noqa: E402

from m3.kernels import msa_decode  # noqa: E402


def probe(n: int, batch: int) -> dict:
    q, kc, vc, kmean, kmin8, kmax8, tables, lens = decode_inputs(n, batch)  # float8 min/max, as the engine's
    variants = {"bf16": (kmin8.to(kmean.dtype), kmax8.to(kmean.dtype)), "fp8": (kmin8, kmax8)}
    flush, clean = l2_flusher(), l2_flusher(clean=True)
    rec, outs = dict(context=n, batch=batch), {}
    for name, (lo, hi) in variants.items():
        step = lambda lo=lo, hi=hi: msa_decode.msa_decode_attention(q, kc, vc, kmean, lo, hi, tables, lens, **KNOBS,
                                                                    return_sel=True)  # fmt: skip
        outs[name] = step()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        rec[name] = dict(write_flush=timeit(graph.replay, reps=30, warmup=3, flush=flush),
                         read_flush=timeit(graph.replay, reps=30, warmup=3, flush=clean),
                         warm=timeit(graph.replay, reps=20, warmup=3, inner=20),
                         kernels_us=kernel_breakdown(graph.replay))  # fmt: skip
        del graph
    rec["pages_equal"] = bool(torch.equal(outs["bf16"][1], outs["fp8"][1]))
    rec["max_abs_diff"] = float((outs["bf16"][0].float() - outs["fp8"][0].float()).abs().max())
    us = lambda v, k: rec[v][k]["median_ms"] * 1e3
    print(f"   {n // 1024}K x{batch}: bf16 {us('bf16', 'write_flush'):.1f} / {us('bf16', 'read_flush'):.1f} us, fp8 "
          f"{us('fp8', 'write_flush'):.1f} / {us('fp8', 'read_flush'):.1f} us (write / read flush); pages equal "
          f"{rec['pages_equal']}, max diff {rec['max_abs_diff']:.3g}; fp8 kernels {rec['fp8']['kernels_us']}",
          flush=True)  # fmt: skip
    return rec


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="1048576x1,131072x8,131072x32")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [probe(*(int(x) for x in c.split("x"))) for c in args.cases.split(",")]
    props = torch.cuda.get_device_properties(0)
    write_record("decode_fp8_probe", dict(gpu=torch.cuda.get_device_name(0), sm_count=props.multi_processor_count,
                                          knobs=KNOBS, cases=rows), args.out)  # fmt: skip


if __name__ == "__main__":
    main()
