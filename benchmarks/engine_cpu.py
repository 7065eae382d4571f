"""SmolLM2-135M-Instruct on the CPU: m3's engine against Hugging Face transformers, same model, same run.

1. Decode tokens/s for 1 prompt, and for 16 concurrent prompts (m3 batches them; transformers' generate runs
   them one after another: its sequential throughput).
2. Prefill time (time to first token) of 2K / 8K / 32K-token prompts, dense vs MSA attention (default knobs).
Usage: python benchmarks/engine_cpu.py [--new-tokens 128] [--prefill 2048,8192,32768] [--skip-hf]
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from common import write_record  # noqa: E402

from m3.eval.fidelity import stdlib_text  # noqa: E402
from m3.llm import LLM  # noqa: E402
from m3.models.loader import default_model_path  # noqa: E402
from m3.sampling_params import SamplingParams  # noqa: E402

PROMPTS = [
    "Explain how a hash map works.",
    "Write a poem about the sea.",
    "What is the capital of Japan?",
    "Describe photosynthesis.",
    "How do I sort a list in Python?",
    "Tell me a story about a dragon.",
    "What are prime numbers?",
    "Summarise the French revolution.",
    "Give me a recipe for pancakes.",
    "Why is the sky blue?",
    "What does a compiler do?",
    "List the planets of the solar system.",
    "How does a bicycle stay upright?",
    "What is machine learning?",
    "Describe the water cycle.",
    "How do vaccines work?",
]


def hf_decode(prompts_ids: list[list[int]], new_tokens: int) -> dict:
    import transformers

    folder, name = os.path.split(default_model_path())
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    with torch.inference_mode():
        model.generate(torch.tensor([prompts_ids[0]]), max_new_tokens=8)  # warm-up
        single = []
        for _ in range(3):
            t = time.perf_counter()
            model.generate(torch.tensor([prompts_ids[0]]), **kw)
            single.append(new_tokens / (time.perf_counter() - t))
        t = time.perf_counter()
        for ids in prompts_ids:
            model.generate(torch.tensor([ids]), **kw)
        sequential = len(prompts_ids) * new_tokens / (time.perf_counter() - t)
    return {
        "one_prompt_tok_s": statistics.median(single),
        "one_prompt_runs": single,
        f"{len(prompts_ids)}_prompts_sequential_tok_s": sequential,
    }


def m3_decode(prompts_ids: list[list[int]], new_tokens: int) -> dict:
    llm = LLM(max_num_seqs=len(prompts_ids))
    params = SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate([prompts_ids[0]], SamplingParams(temperature=0.0, max_tokens=8))  # warm-up
    single = []
    for _ in range(3):
        t = time.perf_counter()
        llm.generate([prompts_ids[0]], params)
        single.append(new_tokens / (time.perf_counter() - t))
    t = time.perf_counter()
    llm.generate(prompts_ids, params)
    batched = len(prompts_ids) * new_tokens / (time.perf_counter() - t)
    return {
        "one_prompt_tok_s": statistics.median(single),
        "one_prompt_runs": single,
        f"{len(prompts_ids)}_prompts_concurrent_tok_s": batched,
    }


def prefill(lengths: list[int]) -> list[dict]:
    rows = []
    text = stdlib_text(max(lengths) * 6)
    for n in lengths:
        for attention in ("msa", "dense"):
            gb = max(1.0, n * 30 * 2 * 3 * 64 * 4 / 2**30 * 1.2)
            llm = LLM(attention=attention, max_model_len=n + 1, kv_cache_gb=gb)
            ids = llm.tokenizer.encode(text, add_special_tokens=False)[:n]
            t = time.perf_counter()
            llm.generate([ids], SamplingParams(temperature=0.0, max_tokens=1))
            seconds = time.perf_counter() - t
            share = llm.engine.runner.selected_share()
            rows.append(
                {
                    "tokens": n,
                    "attention": attention,
                    "ttft_s": round(seconds, 2),
                    "msa_selected_share_last_step": share,
                }
            )
            print(rows[-1], flush=True)
            del llm
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prefill", default="2048,8192,32768")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--skip-decode", action="store_true", help="prefill rows only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    llm_tok = LLM(num_kv_blocks=16, max_model_len=1024).tokenizer
    prompts_ids = [
        llm_tok.encode(llm_tok.apply_chat_template([{"role": "user", "content": p}]), add_special_tokens=False)
        for p in PROMPTS
    ]
    record = {"model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantised, float32)", "new_tokens": args.new_tokens}
    if not args.skip_decode:
        record["m3"] = m3_decode(prompts_ids, args.new_tokens)
        print("m3", record["m3"], flush=True)
    if not args.skip_hf and not args.skip_decode:
        record["transformers"] = hf_decode(prompts_ids, args.new_tokens)
        print("transformers", record["transformers"], flush=True)
        n = len(prompts_ids)
        record["ratios"] = {
            "one_prompt": record["m3"]["one_prompt_tok_s"] / record["transformers"]["one_prompt_tok_s"],
            f"{n}_concurrent_vs_sequential": record["m3"][f"{n}_prompts_concurrent_tok_s"]
            / record["transformers"][f"{n}_prompts_sequential_tok_s"],
        }
        print("ratios", record["ratios"], flush=True)
    if args.prefill:
        record["prefill"] = prefill([int(x) for x in args.prefill.split(",")])
    print("wrote", write_record("engine_cpu", record, args.out))


if __name__ == "__main__":
    main()
