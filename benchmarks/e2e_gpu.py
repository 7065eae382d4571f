"""End to end on one GPU: a Qwen2.5-7B-shaped model with random bf16 weights through m3's engine core (scheduler,
paged KV, chunked prefill, model runner with the Triton MSA kernels): time to first token, decode tokens/s and peak
GPU memory at long contexts, MSA vs dense. Everything here is end to end (all 28 layers, MLPs, LM head).

--positions remap times MSA with remapped positions (remote pages un-rotated in the kernels); dense always uses true
positions. Speed does not depend on the weights. Dense at the longest contexts is fitted and extrapolated (labelled)
when it would not fit the time budget.
--decode-only 131072x1,1048576x1,... times decode steps (batch of x sequences at that context) over a KV cache of
random keys and values, skipping the prefill, for MSA and dense alike: this is how dense decode at 512K/1M is measured
(its prefill would take many minutes). Decode steps replay CUDA graphs unless --eager.
Usage: python benchmarks/e2e_gpu.py --out results.json [--msa 131072,524288,1048576] [--dense 65536,131072]
       [--positions true|remap] [--decode-only CONTEXTxBATCH,...] [--eager] [--profile]
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import write_record  # noqa: E402

from m3.config import Config  # noqa: E402
from m3.engine.block_manager import BlockManager  # noqa: E402
from m3.engine.model_runner import ModelRunner  # noqa: E402
from m3.engine.scheduler import Scheduler  # noqa: E402
from m3.engine.sequence import Sequence, SequenceStatus  # noqa: E402
from m3.models.args import ModelArgs  # noqa: E402
from m3.models.llama import CausalLM  # noqa: E402
from m3.sampling_params import SamplingParams  # noqa: E402

QWEN25_7B = ModelArgs(
    architecture="qwen2",
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_layers=28,
    num_heads=28,
    num_kv_heads=4,
    head_dim=128,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    rope_scaling=None,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
    attention_bias=True,
    qk_norm=False,
)
CHUNK = 16384


def random_weights(args: ModelArgs) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {n: p.shape for n, p in CausalLM(args, [None] * args.num_layers).named_parameters()}
    g = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g, device="cuda", dtype=torch.bfloat16) * 0.02
        out[name] = t + 1 if name.endswith("norm.weight") else t
    return out


def run(runner: ModelRunner, context: int, decode_tokens: int) -> dict:
    blocks = BlockManager(runner.num_blocks, runner.block_size)
    sched = Scheduler(blocks, max_num_seqs=1, max_num_batched_tokens=CHUNK)
    g = torch.Generator().manual_seed(context)
    prompt = torch.randint(0, QWEN25_7B.vocab_size, (context,), generator=g).tolist()
    seq = Sequence("bench", 0, prompt, SamplingParams(temperature=0.0, max_tokens=decode_tokens + 1), None)
    sched.add(seq)
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    step_times = []
    while len(seq) - seq.num_prompt_tokens < decode_tokens + 1:
        batch = sched.schedule()
        ts = time.perf_counter()
        results = runner.run(batch)
        seq.num_computed_tokens += batch.num_tokens[0]
        if results[0] is not None:
            seq.token_ids.append(results[0][0])
            torch.cuda.synchronize()
            step_times.append(time.perf_counter() - (t0 if len(step_times) == 0 else ts))
    decode = sorted(step_times[1:])
    return {
        "context": context,
        "ttft_s": round(step_times[0], 3),
        "decode_ms_per_token_median": round(1000 * decode[len(decode) // 2], 2),
        "decode_tok_s": round(1 / decode[len(decode) // 2], 1),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
    }


def profile_steps(step, steps: int = 5) -> dict:
    """Where a decode step's time goes (torch.profiler over `steps` steps, which adds host overhead): its wall time, the
    GPU time of its kernels (summed; the rest of the wall is the GPU waiting on the host) and the kernels and host ops
    that take the most."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        ts = time.perf_counter()
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - ts) / steps
    events = prof.key_averages()
    gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time_total > 0]
    host = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    per_step = lambda us: round(us / steps / 1000, 3)  # noqa: E731
    return {
        "steps": steps,
        "wall_ms_per_step": round(1000 * wall, 3),
        "gpu_kernel_ms_per_step": per_step(sum(e.device_time_total for e in gpu)),
        "top_kernels_ms_per_step": {
            e.key[:80]: per_step(e.device_time_total) for e in sorted(gpu, key=lambda e: -e.device_time_total)[:15]
        },
        "top_host_ops_self_ms_per_step": {
            e.key[:80]: per_step(e.self_cpu_time_total) for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:15]
        },
    }


def run_decode_only(runner: ModelRunner, context: int, batch: int, decode_tokens: int, profile: bool = False) -> dict:
    """Decode steps of `batch` sequences whose first `context` tokens sit in the cache (random K/V), no prefill."""
    blocks = BlockManager(runner.num_blocks, runner.block_size)
    sched = Scheduler(blocks, max_num_seqs=batch, max_num_batched_tokens=CHUNK)
    g = torch.Generator().manual_seed(context)
    seqs = []
    for b in range(batch):
        prompt = torch.randint(0, QWEN25_7B.vocab_size, (context,), generator=g).tolist()
        seq = Sequence(f"bench{b}", 0, prompt, SamplingParams(temperature=0.0, max_tokens=decode_tokens + 16), None)
        blocks.allocate(seq, context)
        seq.num_computed_tokens = context - 1  # the last prompt token is the first decode input
        seq.status = SequenceStatus.RUNNING
        sched.running.append(seq)
        seqs.append(seq)
    torch.cuda.reset_peak_memory_stats()

    def step():
        batch_ = sched.schedule()
        results = runner.run(batch_)
        for seq, n, r in zip(batch_.seqs, batch_.num_tokens, results):
            seq.num_computed_tokens += n
            seq.token_ids.append(r[0])

    step_times = []
    for _ in range(decode_tokens + 2):  # the first two steps may capture a graph: not timed
        torch.cuda.synchronize()
        ts = time.perf_counter()
        step()
        torch.cuda.synchronize()
        step_times.append(time.perf_counter() - ts)
    breakdown = profile_steps(step) if profile else None
    for seq in seqs:
        sched.finish(seq)
    steps = sorted(step_times[2:])
    med = steps[len(steps) // 2]
    return {
        **({"profile": breakdown} if breakdown else {}),
        "context": context,
        "batch": batch,
        "decode_ms_per_step_median": round(1000 * med, 2),
        "decode_ms_per_step_min": round(1000 * steps[0], 2),
        "decode_ms_per_step_max": round(1000 * steps[-1], 2),
        "decode_tok_s": round(batch / med, 1),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1),
    }


def random_cache(runner: ModelRunner):
    """Random keys/values in every page and their true summaries (speed does not depend on the values)."""
    from m3.kernels.kv_cache import summarize_blocks

    ids = torch.arange(runner.num_blocks, device="cuda")
    for attn in runner.model.attention_layers():
        c = attn.cache
        c.k.normal_()
        c.v.normal_()
        summarize_blocks(c.k, ids, c.kmean, c.kmin, c.kmax)
        if c.raw_kmean is not None:  # raw (un-rotated) summaries: timing only, so the rotated ones stand in
            c.raw_kmean.copy_(c.kmean), c.raw_kmin.copy_(c.kmin), c.raw_kmax.copy_(c.kmax)


def engine_config(args, attention: str, **kw) -> Config:
    """The benchmark's engine settings: bf16 on CUDA, 16K-token chunks; MSA's positions from --positions (dense always
    uses true positions)."""
    return Config(
        device="cuda",
        dtype="bfloat16",
        attention=attention,
        positions=args.positions if attention == "msa" else "true",
        max_num_batched_tokens=CHUNK,
        cuda_graphs=not args.eager,
        **kw,
    )


def decode_only(args, weights, record):
    cases = [tuple(int(v) for v in x.split("x")) for x in args.decode_only.split(",") if x]
    longest = max(n * b for n, b in cases)
    rows = record.setdefault("decode_only", {"msa": [], "dense": []})
    record["decode_only_note"] = "decode steps over a random KV cache, prefill skipped; end to end otherwise"
    for attention in ("msa", "dense"):
        most = max(b for _, b in cases)
        config = engine_config(args, attention, max_num_seqs=most, num_kv_blocks=longest // 64 + 64 * most)
        runner = ModelRunner(config, QWEN25_7B, weights, max(n for n, _ in cases) + 64)
        random_cache(runner)
        for n, b in cases:
            rows[attention].append(run_decode_only(runner, n, b, args.decode_tokens, args.profile))
            print(attention, "decode-only", rows[attention][-1], flush=True)
            write_record("e2e_gpu", record, args.out)
        del runner
        torch.cuda.empty_cache()
    for r in rows["msa"]:
        match = [x for x in rows["dense"] if (x["context"], x["batch"]) == (r["context"], r["batch"])]
        if match:
            r["decode_speedup_vs_dense"] = round(r["decode_tok_s"] / match[0]["decode_tok_s"], 1)
    write_record("e2e_gpu", record, args.out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--msa", default="131072,524288,1048576")
    ap.add_argument("--dense", default="65536,131072")
    ap.add_argument("--decode-tokens", type=int, default=16)
    ap.add_argument("--out", default=None)
    ap.add_argument("--positions", default="true", choices=["true", "remap"], help="MSA's positions (msa.md)")
    ap.add_argument("--decode-only", default="", help="CONTEXTxBATCH,...: decode over a random cache, no prefill")
    ap.add_argument("--eager", action="store_true", help="no CUDA graphs for decode steps")
    ap.add_argument("--profile", action="store_true", help="with --decode-only: a profile of 5 more steps per case")
    args = ap.parse_args()
    longest = max([int(x) for x in (args.msa + "," + args.dense).split(",") if x] or [0])
    weights = random_weights(QWEN25_7B)
    rows = {"msa": [], "dense": []}
    record = {
        "model": "Qwen2.5-7B shape (28 layers, 28 q heads, 4 KV heads, D=128), random bf16 weights",
        "chunk_tokens": CHUNK,
        "batch": 1,
        "positions": args.positions,
        "cuda_graphs": not args.eager,
        "rows": rows,
    }
    if args.decode_only:
        decode_only(args, weights, record)
    for attention, lengths in (("msa", args.msa), ("dense", args.dense)):
        if not lengths or not longest:
            continue
        config = engine_config(args, attention, num_kv_blocks=longest // 64 + 64)
        runner = ModelRunner(config, QWEN25_7B, weights, longest + 64)
        record[f"{attention}_knobs"] = {
            f: getattr(config, f)
            for f in ("block_size", "sink_blocks", "window_blocks", "topk_blocks", "dense_below", "score")
        }
        run(runner, 8192, 4)  # warm-up: Triton compiles
        for n in (int(x) for x in lengths.split(",") if x):
            rows[attention].append(run(runner, n, args.decode_tokens))
            print(attention, rows[attention][-1], flush=True)
            write_record("e2e_gpu", record, args.out)
        del runner
        torch.cuda.empty_cache()
    # -- dense beyond what was run: fit ttft = a*n + b*n^2 on the two longest dense runs (attention is the n^2 part) --
    d = rows["dense"]
    if len(d) >= 2:
        (n1, t1), (n2, t2) = [(r["context"], r["ttft_s"]) for r in d[-2:]]
        b = (t2 / n2 - t1 / n1) / (n2 - n1)
        a = t1 / n1 - b * n1
        record["dense_extrapolated"] = [
            {"context": n, "ttft_s": round(a * n + b * n * n, 1), "extrapolated": True}
            for n in (int(x) for x in args.msa.split(","))
            if n > n2
        ]
    for r in rows["msa"]:
        match = [x for x in d + record.get("dense_extrapolated", []) if x["context"] == r["context"]]
        if match:
            r["ttft_speedup_vs_dense"] = round(match[0]["ttft_s"] / r["ttft_s"], 1)
    path = write_record("e2e_gpu", record, args.out)
    print(f"{'attention':>9} {'context':>9} {'TTFT s':>8} {'decode tok/s':>13} {'peak GB':>8}")
    for attention in ("msa", "dense"):
        for r in rows[attention]:
            print(f"{attention:>9} {r['context']:>9} {r['ttft_s']:>8} {r['decode_tok_s']:>13} {r['peak_gpu_gb']:>8}")
    for r in record.get("dense_extrapolated", []):
        print(f"{'dense*':>9} {r['context']:>9} {r['ttft_s']:>8}   (extrapolated)")
    print("wrote", path)


if __name__ == "__main__":
    main()
