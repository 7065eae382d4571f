"""A/B timings of kernel variants on the GPU (one H200 in the recorded runs), beside benchmarks/kernels.py.

Prefill attention and selection: `prefill_sparse_rows` / `prefill_select_rows` configs (default first) at the given
contexts, each checked against the default (identical selections; attention outputs compared), then the fastest of
each together. Llama-3.1-8B attention shapes as in kernels.py. Writes JSON after every section:

    python benchmarks/kernel_ab.py --out /tmp/ab.json [--prefill 131072,1048576]
        [--attn-configs '[{"IDS_IN_REGS": true}]'] [--select-configs '[{"LSE_BLOCK_Q": 64}]']
        [--decode 1048576x1,131072x8 --decode-configs '[{"FUSE": false}]' --decode-baseline old_msa_decode.py]

Decode: one step of `msa_decode_attention` replayed from a CUDA graph (read and write L2 flushes, warm kernel
breakdown) with module settings of m3.kernels.msa_decode overridden per config (default first), and optionally the
same step from another version of the module (a file), each checked against the default (equal page lists, output
difference).
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernels import (  # noqa: E402, I001
    KNOBS,
    decode_inputs,
    env_section,
    kernel_breakdown,
    l2_flusher,
    make_prefill,
    select_args,
    sparse_args,
    timeit,
)


class Record:
    def __init__(self, path: str):
        self.path, self.data = path, {"benchmark": "kernel_ab", "date": time.strftime("%Y-%m-%d"), "errors": []}

    def save(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w") as f:
            json.dump(self.data, f, indent=1)


def _variants(rec: Record, label: str, fn_of, configs: list[dict], same, reps: int) -> list[dict]:
    """Time fn_of(cfg)() for the default and each config; `same(out, ref)` compares an output with the default's."""
    rows, ref = [], None
    for cfg in [{}] + configs:
        try:
            fn = fn_of(cfg)
            out = fn()
            r = timeit(fn, reps=reps, warmup=1)
            agree = None if ref is None else same(out, ref)
            ref = out if ref is None else ref
            rows.append(dict(config=cfg, agrees_with_default=agree, **r))
            print(f"   {label} {cfg or 'default'}: {r['median_ms']:.2f} ms (agrees: {agree})", flush=True)
        except Exception as e:  # noqa: BLE001
            rows.append(dict(config=cfg, error=f"{type(e).__name__}: {e}"[:500]))
            print(f"   {label} {cfg}: {rows[-1]['error']}", flush=True)
        rec.save()
    return rows


def prefill_ab(rec: Record, n: int, attn_configs: list[dict], select_configs: list[dict]):
    import torch

    from m3.kernels.msa_prefill import prefill_sparse_rows
    from m3.kernels.msa_select import prefill_select_rows

    t = make_prefill(n)
    reps = 5 if n > 300_000 else 10
    res = rec.data.setdefault("prefill", {}).setdefault(str(n), {})
    res["selection"] = _variants(
        rec, f"select {n // 1024}K", lambda cfg: lambda: prefill_select_rows(*select_args(t), **KNOBS, config=cfg),
        select_configs, lambda a, b: bool(torch.equal(a, b)), reps,
    )  # fmt: skip
    sel = prefill_select_rows(*select_args(t), **KNOBS)
    dense_below = KNOBS["dense_below"]
    res["attention"] = _variants(
        rec, f"attention {n // 1024}K",
        lambda cfg: lambda: prefill_sparse_rows(*sparse_args(t, sel), dense_below=dense_below, config=cfg),
        attn_configs, lambda a, b: float((a.float() - b.float()).abs().max()), reps,
    )  # fmt: skip
    # where the default's time goes, kernel by kernel (us per call, CUPTI)
    res["kernels_us"] = kernel_breakdown(
        lambda: prefill_sparse_rows(*sparse_args(t, prefill_select_rows(*select_args(t), **KNOBS)),
                                    dense_below=dense_below),
        reps=5,
    )  # fmt: skip
    print(f"   kernels {n // 1024}K: {res['kernels_us']}", flush=True)
    best = {}
    for kind in ("selection", "attention"):
        ok = [r for r in res[kind] if "median_ms" in r]
        best[kind] = min(ok, key=lambda r: r["median_ms"])["config"] if ok else {}

    def fn():
        sel = prefill_select_rows(*select_args(t), **KNOBS, config=best["selection"])
        return prefill_sparse_rows(*sparse_args(t, sel), dense_below=dense_below, config=best["attention"])

    res["total_best"] = dict(configs=best, **timeit(fn, reps=reps, warmup=1))
    print(f"   total {n // 1024}K {best}: {res['total_best']['median_ms']:.2f} ms", flush=True)
    rec.save()


def decode_ab(rec: Record, n: int, batch: int, configs: list[dict], baseline: str | None):
    import importlib.util

    import torch

    from m3.kernels import msa_decode

    args = decode_inputs(n, batch)
    flush, clean = l2_flusher(), l2_flusher(clean=True)
    modules = [(cfg, msa_decode) for cfg in [{}] + configs]
    if baseline:
        spec = importlib.util.spec_from_file_location("baseline_msa_decode", baseline)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        modules.append(({"baseline": os.path.basename(baseline)}, old))
    rows, ref = [], None
    for cfg, mod in modules:
        saved = {k: getattr(mod, k) for k in cfg if k != "baseline"}
        try:
            for k, v in cfg.items():
                if k != "baseline":
                    setattr(mod, k, v)
            step = lambda mod=mod: mod.msa_decode_attention(*args, **KNOBS, return_sel=True)
            o, pages = step()
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            row = dict(config=cfg, write_flush=timeit(graph.replay, reps=30, warmup=3, flush=flush),
                       read_flush=timeit(graph.replay, reps=30, warmup=3, flush=clean),
                       warm=timeit(graph.replay, reps=20, warmup=3, inner=20),
                       kernels_us=kernel_breakdown(graph.replay))  # fmt: skip
            if ref is not None:
                row["pages_equal"] = bool(torch.equal(pages, ref[1]))
                row["max_abs_diff"] = float((o.float() - ref[0].float()).abs().max())
            ref = ref or (o, pages)
            del graph
        except Exception as e:  # noqa: BLE001
            row = dict(config=cfg, error=f"{type(e).__name__}: {e}"[:500])
        finally:
            for k, v in saved.items():
                setattr(mod, k, v)
        rows.append(row)
        us = lambda r, k: r[k]["median_ms"] * 1e3 if k in r else float("nan")
        print(f"   decode {n // 1024}K x{batch} {cfg or 'default'}: write flush {us(row, 'write_flush'):.1f} us, read "
              f"flush {us(row, 'read_flush'):.1f}, warm {us(row, 'warm'):.1f}; {row.get('kernels_us', row)}",
              flush=True)  # fmt: skip
        rec.data.setdefault("decode", {})[f"{n}x{batch}"] = rows
        rec.save()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--prefill", default="131072,1048576")
    p.add_argument("--attn-configs", default='[{"IDS_IN_REGS": true}]', help="JSON list of non-default configs")
    p.add_argument("--select-configs", default='[{"LSE_BLOCK_Q": 64}]', help="JSON list of non-default configs")
    p.add_argument("--decode", default="", help="contexts x batch, e.g. 1048576x1,131072x8")
    p.add_argument("--decode-configs", default="[]", help="JSON list of m3.kernels.msa_decode settings")
    p.add_argument("--decode-baseline", default=None, help="another msa_decode.py to time beside")
    a = p.parse_args()
    rec = Record(a.out)

    class _Env:  # env_section writes machine, shapes and knobs into run.data
        data = rec.data

    env_section(_Env)
    rec.save()
    for n in (int(x) for x in filter(None, a.prefill.split(","))):
        try:
            prefill_ab(rec, n, json.loads(a.attn_configs), json.loads(a.select_configs))
        except Exception as e:  # noqa: BLE001
            rec.data["errors"].append(f"prefill {n}: {type(e).__name__}: {e}"[:500])
            print("  ", rec.data["errors"][-1], flush=True)
    for spec in filter(None, a.decode.split(",")):
        n, batch = (int(x) for x in spec.split("x"))
        try:
            decode_ab(rec, n, batch, json.loads(a.decode_configs), a.decode_baseline)
        except Exception as e:  # noqa: BLE001
            rec.data["errors"].append(f"decode {spec}: {type(e).__name__}: {e}"[:500])
            print("  ", rec.data["errors"][-1], flush=True)
    rec.save()


if __name__ == "__main__":
    main()
