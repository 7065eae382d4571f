"""Attention-level benchmark of the MSA Triton kernels on one GPU (issue 3): Llama-3.1-8B attention shapes (32 query
heads, 8 KV heads, D=128), bf16, default MSA knobs.

Prefill per layer at 32K/128K/512K/1M tokens (batch 1): selection alone, sparse attention alone (TFLOP/s of the
attended pairs vs the 770 TFLOP/s bf16 ceiling) and the total, against dense SDPA (flash, cuDNN) and FlexAttention
given a BlockMask built from the identical selection. Decode per layer per token at 1M (batch 1) and 128K (batch 8,
32), captured in a CUDA graph, against dense SDPA over the full cache. Random inputs; outputs are checked against the
references at a small size first. Each section is isolated (an error is recorded, the rest still runs) and the JSON is
rewritten after every section. Dense calls predicted to exceed --dense-max-s, or the time budget, are extrapolated at
4x per doubling and labelled so.

    python benchmarks/kernels.py --out benchmarks/results/kernels-h200.json
    python benchmarks/kernels.py --table benchmarks/results/kernels-h200.json   # print the summary table again
"""

import argparse
import contextlib
import json
import math
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "kernels"))  # msa_cases: the test suite's reference checks

H, HKV, D, S = 32, 8, 128, 64
G = H // HKV
KNOBS = dict(block_size=S, sink_blocks=1, window_blocks=16, topk_blocks=32, score="bound", dense_below=4096)
CEILING_TFLOPS = 770.0  # benchmarks.md anchor: bf16 matmul on one H200
CONTEXTS = [32 * 1024, 128 * 1024, 512 * 1024, 1024 * 1024]
PREFILL_CONFIGS = [  # tiles tried at 128K, the fastest used everywhere (dropped: PAGES=4 fails to compile at 128
    # rows, 256 rows x PAGES=2 took 145 ms: kernels-tiles256-h200 record)
    dict(BLOCK_M=128, PAGES=1, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, PAGES=1, num_warps=8, num_stages=2),
    dict(BLOCK_M=128, PAGES=2, num_warps=8, num_stages=2),
    dict(BLOCK_M=128, PAGES=2, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, PAGES=1, num_warps=4, num_stages=3),
    dict(BLOCK_M=64, PAGES=2, num_warps=4, num_stages=2),
    dict(BLOCK_M=256, PAGES=1, num_warps=16, num_stages=2),  # one tile per query block at G=4: pages loaded once
    dict(BLOCK_M=128, PAGES=2, num_warps=8, num_stages=1),
    dict(BLOCK_M=256, PAGES=1, num_warps=8, num_stages=2),
    dict(BLOCK_M=256, PAGES=1, num_warps=16, num_stages=3),
    dict(BLOCK_M=256, PAGES=1, num_warps=8, num_stages=3),
]
SELECT_CONFIGS = [  # over select_config's defaults (BLOCK_Q 32 at G=4, pass 1 on tiles of 64); MERGE_AT=0: always sort
    dict(BLOCK_Q=32), dict(BLOCK_Q=16), dict(BLOCK_Q=32, BLOCK_N=32), dict(BLOCK_Q=32, MERGE_AT=0),
    dict(BLOCK_Q=32, MERGE_AT=16), dict(BLOCK_Q=32, num_stages=2), dict(BLOCK_Q=32, LSE_BLOCK_Q=32),
]  # fmt: skip


class Run:
    """The JSON record, rewritten after every section; sections catch their own errors."""

    def __init__(self, path: str, budget_s: float):
        self.path, self.t0, self.budget_s = path, time.time(), budget_s
        self.data = {"benchmark": "kernels", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "errors": {}}

    def left_s(self) -> float:
        return self.budget_s - (time.time() - self.t0)

    def save(self):
        if not self.path:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        os.replace(tmp, self.path)

    @contextlib.contextmanager
    def section(self, name: str):
        import torch

        t = time.time()
        print(f"== {name} (budget left {self.left_s():.0f} s)", flush=True)
        try:
            yield
        except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
            self.data["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
            print(f"   ERROR in {name}: {type(e).__name__}: {e}", flush=True)
        finally:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            self.data.setdefault("section_s", {})[name] = round(time.time() - t, 1)
            self.save()


def timeit(fn, reps: int = 5, warmup: int = 1, inner: int = 1, flush=None) -> dict:
    """Median (and spread) in ms of `inner` back-to-back calls over `reps` CUDA-event timings, after warm-up."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if flush is not None:
            flush()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]
    return dict(median_ms=times[len(times) // 2], min_ms=times[0], max_ms=times[-1], p25_ms=q(0.25), p75_ms=q(0.75),
                reps=reps, inner=inner)  # fmt: skip


def kernel_breakdown(fn, reps: int = 20) -> dict:
    """Mean GPU time in us per call of each kernel `fn` launches (torch.profiler / CUPTI), by kernel name."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    out = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.count:
            name = e.key[:60]
            out[name] = round(out.get(name, 0.0) + e.device_time_total / reps, 2)  # us per call
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def l2_flusher(clean: bool = False):
    """Evicts the L2 before a timed call by touching 512 MiB: writing it (zero_) leaves the L2 full of dirty lines that
    the timed call then writes back; reading it (clean=True) leaves clean lines, as a layer's weight reads do."""
    import torch

    buf = torch.zeros(512 * 1024 * 1024 // 4, dtype=torch.float32, device="cuda")
    return (lambda: buf.sum()) if clean else (lambda: buf.zero_())


# -- sections --


def env_section(run: Run):
    import torch
    import triton

    try:
        from common import machine

        info = machine()
    except Exception:  # noqa: BLE001
        info = {}
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=torch.cuda.get_device_name(0), sm_count=props.multi_processor_count,
                gpu_memory_gib=round(props.total_memory / 2**30, 1), torch=torch.__version__,
                triton=triton.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)  # fmt: skip
    run.data["machine"] = info
    run.data["shapes"] = dict(num_heads=H, num_kv_heads=HKV, head_dim=D, block_size=S, dtype="bfloat16", batch=1)
    run.data["knobs"] = KNOBS
    # measured bf16 matmul ceiling, next to the 770 TFLOP/s anchor
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    t = timeit(lambda: a @ b, reps=20, warmup=3)
    run.data["matmul_bf16_8192"] = dict(**t, tflops=2 * 8192**3 / t["median_ms"] / 1e9)
    print(f"   {info['gpu']}: bf16 matmul {run.data['matmul_bf16_8192']['tflops']:.0f} TFLOP/s", flush=True)


def check_section(run: Run):
    """Kernel vs references at a small size with the benchmark's shapes (H=32, Hkv=8, D=128, S=64, bf16)."""
    import torch
    from msa_cases import check_decode, check_prefill, make_batch

    knobs = {**KNOBS, "dense_below": 1024}
    batch = make_batch([(0, 5000), (2048, 1111)], num_kv_heads=HKV, group=G, head_dim=D, block_size=S,
                       dtype=torch.bfloat16, device="cuda")  # fmt: skip
    err, bar = check_prefill(batch, knobs)
    dec = make_batch([(7000, 1), (300, 1), (4095, 1)], num_kv_heads=HKV, group=G, head_dim=D, block_size=S,
                     dtype=torch.bfloat16, device="cuda", decode=True)  # fmt: skip
    derr, dbar = check_decode(dec, knobs)
    run.data["check"] = dict(prefill_max_err=err, prefill_bar=bar, decode_max_err=derr, decode_bar=dbar, passed=True)
    print(f"   prefill err {err:.3g} (bar {bar:.3g}), decode err {derr:.3g} (bar {dbar:.3g})", flush=True)


def make_prefill(n: int):
    import torch

    from m3.kernels.kv_cache import summarize_blocks
    from m3.kernels.kv_cache_ref import summary_tensors
    from m3.kernels.paged_ref import prefill_query_blocks

    nb = n // S
    dev, bf = "cuda", torch.bfloat16
    t = dict(
        q=torch.randn(n, H, D, dtype=bf, device=dev),
        k_cache=torch.randn(nb, S, HKV, D, dtype=bf, device=dev),
        v_cache=torch.randn(nb, S, HKV, D, dtype=bf, device=dev),
        block_tables=torch.randperm(nb, device=dev).int()[None],  # pages scattered as in a real pool
        cu_seqlens_q=torch.tensor([0, n], dtype=torch.int32, device=dev),
        q_start=torch.zeros(1, dtype=torch.int32, device=dev),
        seq_lens=torch.tensor([n], dtype=torch.int32, device=dev),
    )
    t["kmean"], t["kmin"], t["kmax"] = summary_tensors(nb, HKV, D, bf, dev)  # the engine's dtypes (float8 min/max)
    ids = torch.arange(nb, device=dev)
    t["summarize"] = lambda: summarize_blocks(t["k_cache"], ids, t["kmean"], t["kmin"], t["kmax"])
    t["summarize"]()
    t["qb_seq"], t["qb_ids"] = prefill_query_blocks(n, t["q_start"], t["seq_lens"], S)
    return t


def bench_remap(q, kmean, kmin, kmax, num_pages: int):
    """Remap inputs of the right shapes (timing only: q stands in for q_remote, the summaries for raw ones)."""
    import torch

    from m3.kernels.remap import Remap, rope_tables

    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    tables = rope_tables(inv_freq, num_pages, S, q.device)
    return Remap(q, kmean, kmin, kmax, *tables, window_blocks=KNOBS["window_blocks"], from_block=0)


def select_args(t):
    return (t["q"], t["kmean"], t["kmin"], t["kmax"], t["block_tables"], t["cu_seqlens_q"], t["q_start"],
            t["seq_lens"], t["qb_seq"], t["qb_ids"])  # fmt: skip


def sparse_args(t, sel):
    return (t["q"], t["k_cache"], t["v_cache"], t["block_tables"], t["cu_seqlens_q"], t["q_start"], t["seq_lens"],
            sel, t["qb_seq"], t["qb_ids"])  # fmt: skip


def attended_pairs(sel, qb_ids, n: int) -> int:
    """(query head, key) pairs the sparse attention computes for a batch-1 prefill from position 0: every key of the
    earlier selected blocks (all earlier blocks below dense_below) plus the causal half of the current block."""
    import torch

    num_q = n // S
    i = qb_ids[:num_q].long()[:, None]
    n_sel = (sel[:num_q] >= 0).sum(-1)  # (Q, Hkv)
    prev = torch.where(i * S < KNOBS["dense_below"], i.expand_as(n_sel), n_sel - 1)
    return int((prev * S * S + S * (S + 1) // 2).sum()) * G


def tune_section(run: Run, n: int = 128 * 1024):
    from m3.kernels.msa_prefill import prefill_sparse_rows
    from m3.kernels.msa_select import prefill_select_rows

    t = make_prefill(n)
    res, best = {"context": n, "attention": [], "selection": []}, {}
    for cfg in SELECT_CONFIGS:
        try:
            r = timeit(lambda cfg=cfg: prefill_select_rows(*select_args(t), **KNOBS, config=cfg), reps=5)
            res["selection"].append(dict(config=cfg, **r))
        except Exception as e:  # noqa: BLE001
            res["selection"].append(dict(config=cfg, error=f"{type(e).__name__}: {e}"[:300]))
    sel = prefill_select_rows(*select_args(t), **KNOBS)
    for cfg in PREFILL_CONFIGS:
        try:
            fn = lambda cfg=cfg: prefill_sparse_rows(*sparse_args(t, sel), dense_below=KNOBS["dense_below"], config=cfg)
            res["attention"].append(dict(config=cfg, **timeit(fn, reps=5)))
        except Exception as e:  # noqa: BLE001
            res["attention"].append(dict(config=cfg, error=f"{type(e).__name__}: {e}"[:300]))
    for kind in ("selection", "attention"):
        ok = [r for r in res[kind] if "median_ms" in r]
        if ok:
            best[kind] = min(ok, key=lambda r: r["median_ms"])["config"]
            print(f"   {kind}: " + ", ".join(f"{r['config']} {r['median_ms']:.2f} ms" for r in ok), flush=True)
    res["best"] = best
    run.data["tuning"] = res


def msa_prefill_section(run: Run, n: int):
    from m3.kernels.msa_prefill import msa_prefill_attention, prefill_sparse_rows
    from m3.kernels.msa_select import prefill_select_rows

    best = run.data.get("tuning", {}).get("best", {})
    sel_cfg, attn_cfg = best.get("selection"), best.get("attention")
    t = make_prefill(n)
    rec = dict(context=n, select_config=sel_cfg, attention_config=attn_cfg)
    rec["summarize_blocks"] = timeit(t["summarize"], reps=5)
    if n == max(run.data["contexts"]) and n > 128 * 1024:
        # the selection's share grows with n: tune its tiles again at the longest context
        tried = []
        for cfg in SELECT_CONFIGS:
            try:
                r = timeit(lambda cfg=cfg: prefill_select_rows(*select_args(t), **KNOBS, config=cfg), reps=3)
                tried.append(dict(config=cfg, **r))
            except Exception as e:  # noqa: BLE001  (e.g. out of shared memory)
                tried.append(dict(config=cfg, error=f"{type(e).__name__}: {e}"[:300]))
        rec["selection_tuning"] = tried
        ok = [r for r in tried if "median_ms" in r]
        sel_cfg = rec["select_config"] = min(ok, key=lambda r: r["median_ms"])["config"]
    rec["selection"] = timeit(lambda: prefill_select_rows(*select_args(t), **KNOBS, config=sel_cfg), reps=5)
    sel = prefill_select_rows(*select_args(t), **KNOBS, config=sel_cfg)
    fn = lambda: prefill_sparse_rows(*sparse_args(t, sel), dense_below=KNOBS["dense_below"], config=attn_cfg)
    rec["attention"] = timeit(fn, reps=5)
    # total: selection + attention with the tuned tiles; and the public entry point with its default tiles, exactly
    # as the engine calls it (table metadata, selection, attention)
    rec["total"] = timeit(lambda: (prefill_select_rows(*select_args(t), **KNOBS, config=sel_cfg), fn()), reps=5)
    args = [t[k] for k in ("q", "k_cache", "v_cache", "kmean", "kmin", "kmax", "block_tables", "cu_seqlens_q",
                           "q_start", "seq_lens")]  # fmt: skip
    rec["total_default_tiles"] = timeit(lambda: msa_prefill_attention(*args, **KNOBS), reps=5)
    # remapped positions (every block remaps: remote pages un-rotated in registers, selection on raw summaries)
    remap = bench_remap(t["q"], t["kmean"], t["kmin"], t["kmax"], t["block_tables"].shape[1])
    rec["total_remap_default_tiles"] = timeit(lambda: msa_prefill_attention(*args, **KNOBS, remap=remap), reps=5)
    pairs = attended_pairs(sel, t["qb_ids"], n)
    rec["attended_pairs"] = pairs
    rec["attended_share"] = pairs / (H * n * (n + 1) / 2)
    rec["attention_tflops"] = 4 * D * pairs / rec["attention"]["median_ms"] / 1e9
    rec["attention_share_of_770"] = rec["attention_tflops"] / CEILING_TFLOPS
    rec["selection_share_of_total"] = rec["selection"]["median_ms"] / rec["total"]["median_ms"]
    run.data.setdefault("prefill", {}).setdefault(str(n), {})["msa"] = rec
    print(f"   {n // 1024}K: selection {rec['selection']['median_ms']:.2f} ms, attention "
          f"{rec['attention']['median_ms']:.2f} ms ({rec['attention_tflops']:.0f} TFLOP/s), total "
          f"{rec['total']['median_ms']:.2f} ms", flush=True)  # fmt: skip
    # keep the selection for FlexAttention (small: Q x Hkv x K int32)
    run.selections = getattr(run, "selections", {})
    run.selections[n] = (sel[: n // S].cpu(), t["qb_ids"][: n // S].cpu())


def _sdpa(backend: str, q, k, v, gqa: bool, causal: bool):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    b = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
         "efficient": SDPBackend.EFFICIENT_ATTENTION}[backend]  # fmt: skip
    with sdpa_kernel([b]):
        if gqa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def dense_prefill_section(run: Run, n: int, backend: str, dense_max_s: float):
    """Dense causal SDPA at context n; skipped (extrapolated 4x per doubling) when too slow for the budget."""
    import torch

    rec = run.data.setdefault("prefill", {}).setdefault(str(n), {})
    prev = [(int(m), r[backend]["median_ms"]) for m, r in run.data["prefill"].items()
            if backend in r and "median_ms" in r[backend] and not r[backend].get("extrapolated")]  # fmt: skip
    predicted_s = None
    if prev:
        m, ms = max(prev)
        predicted_s = ms * (n / m) ** 2 / 1e3
    if predicted_s is not None and (predicted_s > dense_max_s or 7 * predicted_s > run.left_s() - 60):
        m, ms = max(prev)
        note = f"not run: predicted {predicted_s:.1f} s per call; 4x per doubling from {m}"
        rec[backend] = dict(median_ms=ms * (n / m) ** 2, extrapolated=True, from_context=m, note=note)
        print(f"   dense {backend} {n // 1024}K: extrapolated {rec[backend]['median_ms'] / 1e3:.2f} s", flush=True)
        return
    q = torch.randn(1, H, n, D, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, HKV, n, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(1, HKV, n, D, dtype=torch.bfloat16, device="cuda")
    layout = "gqa"
    try:
        _sdpa(backend, q[:, :, :256], k[:, :, :256], v[:, :, :256], gqa=True, causal=True)
    except Exception:  # noqa: BLE001 - this backend has no GQA: give it the expanded K/V (not timed)
        k, v, layout = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), "kv expanded to 32 heads"
    fn = lambda: _sdpa(backend, q, k, v, gqa=layout == "gqa", causal=True)
    r = timeit(fn, reps=5, warmup=1)
    flops = 4 * D * H * n * (n + 1) / 2
    rec[backend] = dict(**r, layout=layout, tflops=flops / r["median_ms"] / 1e9)
    print(f"   dense {backend} {n // 1024}K: {r['median_ms']:.1f} ms ({layout})", flush=True)


def flex_block_mask(sel, qb_ids, n: int, device: str = "cuda"):
    """BlockMask (1, H, Q) from the MSA selection: the current block partial (causal), the other selected blocks
    full; dense query blocks (position < dense_below) get every earlier block, as the MSA kernel does."""
    import inspect

    import torch
    from torch.nn.attention.flex_attention import BlockMask

    sel, i = sel.to(device).long(), qb_ids.to(device).long()  # (Q, Hkv, K), (Q,)
    num_q = sel.shape[0]
    n_sel = (sel >= 0).sum(-1)  # (Q, Hkv)
    dense_blocks = math.ceil(KNOBS["dense_below"] / S)
    width = max(sel.shape[-1] - 1, dense_blocks, 1)
    pos = torch.arange(width, device=device)
    is_dense = (i * S < KNOBS["dense_below"])[:, None, None]
    msa_full = torch.zeros(num_q, HKV, width, dtype=torch.long, device=device)
    msa_full[..., : sel.shape[-1] - 1] = sel[..., :-1].clamp(min=0)
    msa_full = torch.where(pos < (n_sel - 1)[..., None], msa_full, 0)
    full = torch.where(is_dense, torch.where(pos < i[:, None, None], pos, 0), msa_full)
    full_num = torch.where(is_dense[..., 0], i[:, None], n_sel - 1)
    expand = lambda x: x.transpose(0, 1).repeat_interleave(G, dim=0)[None].int().contiguous()  # (1, H, Q, ...)
    kv_num = torch.ones(1, H, num_q, dtype=torch.int32, device=device)
    kv_idx = i[None, None, :, None].expand(1, H, num_q, 1).int().contiguous()

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    kw = dict(BLOCK_SIZE=S, mask_mod=causal)
    params = inspect.signature(BlockMask.from_kv_blocks).parameters
    if "seq_lengths" in params:
        kw["seq_lengths"] = (n, n)
    if "compute_q_blocks" in params:
        kw["compute_q_blocks"] = False  # forward only
    return BlockMask.from_kv_blocks(kv_num, kv_idx, expand(full_num), expand(full), **kw)


def flex_section(run: Run, n: int, flex):
    import torch

    rec = run.data.setdefault("prefill", {}).setdefault(str(n), {})
    if n not in getattr(run, "selections", {}):
        rec["flex"] = dict(error="no MSA selection at this context (its section failed)")
        return
    sel, qb_ids = run.selections[n]
    t0 = time.time()
    mask = flex_block_mask(sel, qb_ids, n)
    torch.cuda.synchronize()
    build_s = time.time() - t0
    q = torch.randn(1, H, n, D, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, HKV, n, D, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(1, HKV, n, D, dtype=torch.bfloat16, device="cuda")
    errors = []
    for opts in ({"BLOCK_M": 64, "BLOCK_N": 64}, None):
        try:
            fn = lambda opts=opts: flex(q, k, v, block_mask=mask, enable_gqa=True, kernel_options=opts)
            t0 = time.time()
            fn()
            torch.cuda.synchronize()
            first_s = time.time() - t0
            r = timeit(fn, reps=5)
            pairs = run.data["prefill"][str(n)].get("msa", {}).get("attended_pairs")
            rec["flex"] = dict(**r, kernel_options=opts, first_call_s=round(first_s, 1),
                               block_mask_build_s=round(build_s, 3),
                               tflops=4 * D * pairs / r["median_ms"] / 1e9 if pairs else None)  # fmt: skip
            print(f"   flex {n // 1024}K: {r['median_ms']:.2f} ms (options {opts})", flush=True)
            return
        except torch.cuda.OutOfMemoryError as e:
            rec["flex"] = dict(error=f"out of memory: {e}"[:400])
            print(f"   flex {n // 1024}K: out of memory", flush=True)
            return
        except Exception as e:  # noqa: BLE001
            errors.append(f"options {opts}: {type(e).__name__}: {e}"[:400])
    rec["flex"] = dict(error=" | ".join(errors))
    print(f"   flex {n // 1024}K failed: {errors[-1][:200]}", flush=True)


def decode_inputs(n: int, batch: int) -> tuple:
    """msa_decode_attention's inputs for `batch` sequences of n cached tokens: random K/V, true summaries, pages in
    random order."""
    import torch

    from m3.kernels.kv_cache import summarize_blocks
    from m3.kernels.kv_cache_ref import summary_tensors

    dev, bf = "cuda", torch.bfloat16
    nb = n // S
    k_cache = torch.randn(batch * nb, S, HKV, D, dtype=bf, device=dev)
    v_cache = torch.randn_like(k_cache)
    sums = summary_tensors(batch * nb, HKV, D, bf, dev)
    summarize_blocks(k_cache, torch.arange(batch * nb, device=dev), *sums)
    tables = torch.randperm(batch * nb, device=dev).int().view(batch, nb)
    lens = torch.full((batch,), n, dtype=torch.int32, device=dev)
    q = torch.randn(batch, H, D, dtype=bf, device=dev)
    return (q, k_cache, v_cache, *sums, tables, lens)


def decode_section(run: Run, n: int, batch: int):
    """One decode step per layer: MSA (graph-captured) vs dense SDPA over the full cache."""
    import torch

    from m3.kernels.msa_decode import msa_decode_attention

    dev, bf = "cuda", torch.bfloat16
    args = decode_inputs(n, batch)
    q, sums = args[0], args[3:6]
    msa_decode_attention(*args, **KNOBS)  # compile
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        msa_decode_attention(*args, **KNOBS)
    flush = l2_flusher()
    rec = dict(context=n, batch=batch)
    rec["msa_graph_cold_l2"] = timeit(graph.replay, reps=30, warmup=3, flush=flush)
    rec["msa_graph_clean_l2"] = timeit(graph.replay, reps=30, warmup=3, flush=l2_flusher(clean=True))
    rec["msa_graph_warm"] = timeit(graph.replay, reps=20, warmup=3, inner=20)
    rec["msa_eager"] = timeit(lambda: msa_decode_attention(*args, **KNOBS), reps=20, warmup=2, inner=5)
    try:
        rec["msa_kernels_us"] = kernel_breakdown(graph.replay)  # warm L2
    except Exception as e:  # noqa: BLE001
        rec["msa_kernels_us"] = dict(error=f"{type(e).__name__}: {e}"[:300])
    remap = bench_remap(q, *sums, n // S)
    msa_decode_attention(*args, **KNOBS, remap=remap)
    remap_graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(remap_graph):
        msa_decode_attention(*args, **KNOBS, remap=remap)
    rec["msa_remap_graph_cold_l2"] = timeit(remap_graph.replay, reps=30, warmup=3, flush=flush)
    del remap_graph, remap, graph
    args = sums = None  # the paged cache: freed before the dense run
    torch.cuda.empty_cache()
    # dense: SDPA over each sequence's whole cache (B, Hkv, n, D); GQA by folding the G query heads of a KV head into
    # G query rows (non-causal: they all sit at the last position), so every backend reads each key once
    kd = torch.randn(batch, HKV, n, D, dtype=bf, device=dev)
    vd = torch.randn_like(kd)
    qd = q.view(batch, HKV, G, D)
    for backend in ("flash", "cudnn", "efficient"):
        try:
            fn = lambda backend=backend: _sdpa(backend, qd, kd, vd, gqa=False, causal=False)
            fn()
            rec[f"dense_{backend}"] = timeit(fn, reps=30, warmup=3, flush=flush)
        except Exception as e:  # noqa: BLE001
            rec[f"dense_{backend}"] = dict(error=f"{type(e).__name__}: {e}"[:300])
    dense = [r["median_ms"] for k, r in rec.items() if k.startswith("dense_") and "median_ms" in r]
    rec["dense_best_ms"] = min(dense) if dense else None
    rec["msa_per_token_us"] = rec["msa_graph_cold_l2"]["median_ms"] * 1e3 / batch
    rec["msa_per_token_clean_l2_us"] = rec["msa_graph_clean_l2"]["median_ms"] * 1e3 / batch
    rec["dense_kv_bytes"] = 2 * batch * n * HKV * D * 2
    if rec["dense_best_ms"]:
        rec["dense_per_token_us"] = rec["dense_best_ms"] * 1e3 / batch
        rec["dense_tb_per_s"] = rec["dense_kv_bytes"] / rec["dense_best_ms"] / 1e9
    run.data.setdefault("decode", {})[f"{n}x{batch}"] = rec
    print(f"   decode {n // 1024}K x{batch}: MSA {rec['msa_graph_cold_l2']['median_ms'] * 1e3:.1f} us/step "
          f"(graph, cold L2; {rec['msa_graph_clean_l2']['median_ms'] * 1e3:.1f} after a read flush; eager "
          f"{rec['msa_eager']['median_ms'] * 1e3:.1f} us), dense best "
          f"{(rec['dense_best_ms'] or float('nan')) * 1e3:.1f} us", flush=True)  # fmt: skip


def decode_tune_section(run: Run, n: int, batch: int):
    """Graph-replay time of one decode step for the split sizes of msa_decode (score / top-k splits)."""
    import torch

    from m3.kernels import msa_decode

    args = decode_inputs(n, batch)
    flush = l2_flusher()
    saved = msa_decode._SCORE_SPLIT, msa_decode._TOPK_SPLIT, msa_decode._SCORE_BLOCK_N
    rows = []
    variants = ((256, 1024, 64), (256, 1024, 128), (128, 1024, 64), (128, 512, 32), (256, 512, 64), (512, 1024, 128))
    for score_split, topk_split, block_n in variants:
        msa_decode._SCORE_SPLIT, msa_decode._TOPK_SPLIT, msa_decode._SCORE_BLOCK_N = score_split, topk_split, block_n
        try:
            msa_decode.msa_decode_attention(*args, **KNOBS)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                msa_decode.msa_decode_attention(*args, **KNOBS)
            r = timeit(graph.replay, reps=20, warmup=3, flush=flush)
            rows.append(dict(score_split=score_split, topk_split=topk_split, block_n=block_n,
                             median_us=r["median_ms"] * 1e3))  # fmt: skip
            del graph
        except Exception as e:  # noqa: BLE001
            rows.append(dict(score_split=score_split, topk_split=topk_split, error=f"{type(e).__name__}: {e}"[:300]))
        print(f"   decode tune {n // 1024}K x{batch}: {rows[-1]}", flush=True)
    msa_decode._SCORE_SPLIT, msa_decode._TOPK_SPLIT, msa_decode._SCORE_BLOCK_N = saved
    run.data.setdefault("decode_tune", {})[f"{n}x{batch}"] = rows


# -- summary table --


def table(data: dict) -> str:
    fmt = lambda ms: "-" if ms is None else (f"{ms / 1e3:.2f} s" if ms >= 1000 else f"{ms:.2f} ms")
    med = lambda r: None if not isinstance(r, dict) else r.get("median_ms")
    check = ("passed" if data["check"].get("passed") else "FAILED") if "check" in data else "not run"
    lines = [f"GPU: {data.get('machine', {}).get('gpu', '?')}  torch {data.get('machine', {}).get('torch', '?')}  "
             f"triton {data.get('machine', {}).get('triton', '?')}  check: {check}"]  # fmt: skip
    mm = data.get("matmul_bf16_8192", {}).get("tflops")
    if mm:
        lines.append(f"measured bf16 matmul ceiling: {mm:.0f} TFLOP/s (anchor 770)")
    lines.append("prefill per layer (bf16, H=32/Hkv=8/D=128, batch 1; * = extrapolated)")
    lines.append(f"{'ctx':>6} {'select':>10} {'attn':>10} {'TFLOP/s':>8} {'MSA total':>10} {'sel %':>6} "
                 f"{'flash':>10} {'cuDNN':>10} {'flex':>10}")  # fmt: skip
    for n, r in sorted(data.get("prefill", {}).items(), key=lambda x: int(x[0])):
        m = r.get("msa", {})
        star = lambda k, r=r: fmt(med(r.get(k))) + ("*" if r.get(k, {}).get("extrapolated") else "")
        flex = r.get("flex", {})
        flex_s = fmt(med(flex)) if med(flex) else ("OOM" if "memory" in str(flex.get("error", "")) else "err/-")
        tf = m.get("attention_tflops")
        sel_share = m.get("selection_share_of_total")
        lines.append(f"{int(n) // 1024:>5}K {fmt(med(m.get('selection'))):>10} {fmt(med(m.get('attention'))):>10} "
                     f"{(f'{tf:.0f}' if tf else '-'):>8} {fmt(med(m.get('total'))):>10} "
                     f"{(f'{100 * sel_share:.0f}%' if sel_share else '-'):>6} {star('flash'):>10} "
                     f"{star('cudnn'):>10} {flex_s:>10}")  # fmt: skip
    lines.append("decode per layer (CUDA graph, cold L2: after a write flush / a read flush)")
    for key, r in data.get("decode", {}).items():
        step = med(r.get("msa_graph_cold_l2"))
        clean = med(r.get("msa_graph_clean_l2"))
        lines.append(f"  {key:>12}: MSA {r.get('msa_per_token_us', float('nan')):.1f} us/token "
                     f"({(step or float('nan')) * 1e3:.1f} / {(clean or float('nan')) * 1e3:.1f} us/step), dense best "
                     f"{r.get('dense_per_token_us', float('nan')):.1f} us/token")  # fmt: skip
    if data.get("errors"):
        lines.append("errors in: " + ", ".join(data["errors"]))
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "kernels.json"))
    p.add_argument("--table", help="print the summary table of an existing JSON record and exit")
    p.add_argument("--contexts", default=",".join(str(c) for c in CONTEXTS))
    p.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget; dense/flex runs yield to it")
    p.add_argument("--dense-max-s", type=float, default=30.0, help="extrapolate dense calls predicted to be slower")
    p.add_argument("--skip", default="", help="comma-separated: tune,check,flex,dense,decode,prefill")
    p.add_argument("--decode-tune", action="store_true", help="also sweep the decode split sizes")
    args = p.parse_args()
    if args.table:
        print(table(json.load(open(args.table))))
        return
    import torch

    assert torch.cuda.is_available(), "benchmarks/kernels.py needs a CUDA GPU"
    skip = set(filter(None, args.skip.split(",")))
    contexts = [int(c) for c in args.contexts.split(",")]
    run = Run(args.out, args.budget_s)
    run.data["contexts"] = contexts
    with run.section("env"):
        env_section(run)
    if "check" not in skip:
        with run.section("check"):
            check_section(run)
    if "tune" not in skip:
        with run.section("tune"):
            tune_section(run, min(128 * 1024, max(contexts)))
    for n in contexts if "prefill" not in skip else []:
        with run.section(f"msa_prefill_{n}"):
            msa_prefill_section(run, n)
    if args.decode_tune:
        for n, b in ((max(contexts), 1), (128 * 1024, 8)):
            with run.section(f"decode_tune_{n}x{b}"):
                decode_tune_section(run, n, b)
    if "decode" not in skip:
        for n, b in ((max(contexts), 1), (128 * 1024, 8), (128 * 1024, 32)):
            with run.section(f"decode_{n}x{b}"):
                decode_section(run, n, b)
    # dense at short contexts, then FlexAttention, then the long dense runs (seconds each) while the budget lasts
    small = [n for n in contexts if n <= 128 * 1024]
    if "dense" not in skip:
        for n in small:
            for backend in ("cudnn", "flash"):
                with run.section(f"dense_{backend}_{n}"):
                    dense_prefill_section(run, n, backend, args.dense_max_s)
    if "flex" not in skip:
        flex = None
        with run.section("flex_compile"):
            from torch.nn.attention.flex_attention import flex_attention

            flex = torch.compile(flex_attention, dynamic=False)
        for n in contexts:
            if flex is None or run.left_s() < 45:
                run.data.setdefault("prefill", {}).setdefault(str(n), {})["flex"] = dict(error="skipped: time budget")
                continue
            with run.section(f"flex_{n}"):
                flex_section(run, n, flex)
    if "dense" not in skip:
        for n in contexts:
            if n in small:
                continue
            for backend in ("cudnn", "flash"):
                with run.section(f"dense_{backend}_{n}"):
                    dense_prefill_section(run, n, backend, args.dense_max_s)
    run.data["wall_s"] = round(time.time() - run.t0, 1)
    run.save()
    print(table(run.data))


if __name__ == "__main__":
    main()
