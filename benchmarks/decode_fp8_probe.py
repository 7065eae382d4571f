"""Timing probe: MSA decode per layer with the min/max block summaries stored in float8 e4m3 (rounded outward, so the
bound score stays an upper bound) instead of bf16, on the GPU. Not an engine feature: msa.md's summaries are in the
cache dtype; this measures what 8-bit summaries would buy (the scoring kernel reads all summaries: 64 MB at 1M in
bf16, 32 MB here). Quality of the same rounding: `benchmarks/msa_recall.py --scores bound,bound_fp8`.

Each case runs the step twice from CUDA graphs: bf16 summaries holding the fp8-rounded values (exact in bf16) and the
float8 summaries themselves; page lists must be equal and outputs equal. Llama-3.1-8B attention shapes (kernels.py).
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

from m3.eval.fidelity import round_outward_fp8  # noqa: E402
from m3.kernels import msa_decode  # noqa: E402


def _lenient_check(kmean, kmin, kmax, score):
    assert score == "bound" and kmin.dtype == kmax.dtype == torch.float8_e4m3fn and kmin.shape == kmean.shape
    return kmin, kmax


def probe(n: int, batch: int) -> dict:
    q, kc, vc, kmean, kmin, kmax, tables, lens = decode_inputs(n, batch)
    kmin8 = round_outward_fp8(kmin.float(), up=False).to(torch.float8_e4m3fn)
    kmax8 = round_outward_fp8(kmax.float(), up=True).to(torch.float8_e4m3fn)
    variants = {"bf16": (kmin8.to(kmean.dtype), kmax8.to(kmean.dtype)), "fp8": (kmin8, kmax8)}
    flush, clean = l2_flusher(), l2_flusher(clean=True)
    rec, outs = dict(context=n, batch=batch), {}
    checker = msa_decode._check_summaries
    for name, (lo, hi) in variants.items():
        msa_decode._check_summaries = _lenient_check if name == "fp8" else checker
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
    msa_decode._check_summaries = checker
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
