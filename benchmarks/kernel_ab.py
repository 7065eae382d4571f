"""A/B timings of kernel variants on the GPU (one H200 in the recorded runs), beside benchmarks/kernels.py.

Decode: the three-launch MSA decode step with programmatic dependent launch on and off (M3_PDL), replayed from a CUDA
graph after a read flush of the L2 and warm, with the outputs of both compared. Selection: prefill_select_rows
configs (default first) at 128K and 1M, timed and checked for identical selections. Llama-3.1-8B attention shapes
as in kernels.py. Writes JSON after every section:

    python benchmarks/kernel_ab.py --out /tmp/ab.json [--decode 1048576x1,131072x8] [--select 131072,1048576]
        [--select-configs '[{"FUSED_MIN": false}]']
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernels import KNOBS, decode_inputs, env_section, kernel_breakdown, l2_flusher, make_prefill, select_args, timeit  # noqa: E402, I001


class Record:
    def __init__(self, path: str):
        self.path, self.data = path, {"benchmark": "kernel_ab", "date": time.strftime("%Y-%m-%d"), "errors": []}

    def save(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w") as f:
            json.dump(self.data, f, indent=1)


def interleave_summaries(args: tuple) -> tuple:
    """The same inputs with kmean, kmin, kmax as views of one (NB, Hkv, 3, D) tensor: a block's min and max of a head
    sit in 512 contiguous bytes."""
    import torch

    kmean = args[3]
    packed = torch.empty(*kmean.shape[:2], 3, kmean.shape[2], dtype=kmean.dtype, device=kmean.device)
    views = tuple(packed[:, :, c] for c in range(3))
    for v, src in zip(views, args[3:6]):
        v.copy_(src)
    return (*args[:3], *views, *args[6:])


def decode_ab(rec: Record, n: int, batch: int, variants: list[str]):
    import torch

    from m3.kernels import msa_decode

    args = decode_inputs(n, batch)
    plain_args = args
    out, res = {}, {"context": n, "batch": batch}
    for name in variants:  # M3_PDL value, "+interleaved" for packed summaries
        pdl = name.split("+")[0]
        args = interleave_summaries(plain_args) if name.endswith("+interleaved") else plain_args
        os.environ["M3_PDL"] = pdl
        msa_decode.pdl_supported.cache_clear()
        o = msa_decode.msa_decode_attention(*args, **KNOBS)  # compile
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            og = msa_decode.msa_decode_attention(*args, **KNOBS)
        graph.replay()
        torch.cuda.synchronize()
        out[name] = og.clone()
        res[name] = dict(
            enabled=msa_decode.pdl_supported(args[0].device),
            graph_clean_l2=timeit(graph.replay, reps=40, warmup=5, flush=l2_flusher(clean=True)),
            graph_cold_l2=timeit(graph.replay, reps=40, warmup=5, flush=l2_flusher()),
            graph_warm=timeit(graph.replay, reps=20, warmup=3, inner=20),
            eager_equals_graph=bool(torch.equal(o, og)),
            kernels_us=kernel_breakdown(graph.replay),
        )
        del graph
        print(f"   decode {n // 1024}K x{batch} {name}: {res[name]['graph_clean_l2']['median_ms'] * 1e3:.1f} us "
              f"(read flush), {res[name]['graph_cold_l2']['median_ms'] * 1e3:.1f} (write flush), "
              f"{res[name]['graph_warm']['median_ms'] * 1e3:.1f} warm", flush=True)  # fmt: skip
    first = out[variants[0]].float()
    res["max_abs_diff_vs_first"] = {k: float((v.float() - first).abs().max()) for k, v in out.items()}
    os.environ.pop("M3_PDL")
    msa_decode.pdl_supported.cache_clear()
    rec.data.setdefault("decode", {})[f"{n}x{batch}"] = res
    rec.save()


def select_ab(rec: Record, n: int, configs: list[dict]):
    import torch

    from m3.kernels.msa_select import prefill_select_rows

    t = make_prefill(n)
    rows, ref = [], None
    for cfg in [{}] + configs:
        try:
            fn = lambda cfg=cfg: prefill_select_rows(*select_args(t), **KNOBS, config=cfg)
            sel = fn()
            r = timeit(fn, reps=5 if n > 300_000 else 10, warmup=1)
            same = None if ref is None else bool(torch.equal(sel, ref))
            ref = sel if ref is None else ref
            rows.append(dict(config=cfg, same_selection_as_default=same, **r))
            print(f"   select {n // 1024}K {cfg or 'default'}: {r['median_ms']:.2f} ms (same: {same})", flush=True)
        except Exception as e:  # noqa: BLE001
            rows.append(dict(config=cfg, error=f"{type(e).__name__}: {e}"[:500]))
            print(f"   select {n // 1024}K {cfg}: {rows[-1]['error']}", flush=True)
    rec.data.setdefault("selection", {})[str(n)] = rows
    rec.save()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--decode", default="1048576x1,131072x8,131072x32")
    p.add_argument("--select", default="131072,1048576")
    p.add_argument(
        "--decode-variants", default="0,1", help="M3_PDL values (0, 1, late), +interleaved: packed summaries"
    )
    p.add_argument("--select-configs", default='[{"FUSED_MIN": false}]', help="JSON list of other configs")
    a = p.parse_args()
    rec = Record(a.out)

    class _Env:  # env_section writes machine, shapes and knobs into run.data
        data = rec.data

    env_section(_Env)
    rec.save()
    for spec in filter(None, a.decode.split(",")):
        n, batch = (int(x) for x in spec.split("x"))
        try:
            decode_ab(rec, n, batch, a.decode_variants.split(","))
        except Exception as e:  # noqa: BLE001
            rec.data["errors"].append(f"decode {spec}: {type(e).__name__}: {e}"[:500])
            print("  ", rec.data["errors"][-1], flush=True)
    for n in (int(x) for x in filter(None, a.select.split(","))):
        select_ab(rec, n, json.loads(a.select_configs))
    rec.save()


if __name__ == "__main__":
    main()
