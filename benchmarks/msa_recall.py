"""MSA fidelity on SmolLM2-135M-Instruct over real text (Python standard library sources), CPU.

1. Attention recall per layer: the share of dense attention probability inside MSA's selection, for the default
   knobs and other budgets, with the bound / mean scores and the oracle selector, for query positions past
   dense_below (where MSA is active).
2. Next-token top-1 agreement, KL and perplexity of MSA (default knobs) vs dense over the last 1K tokens.
Usage: python benchmarks/msa_recall.py [--tokens 8192] [--query-from 4096] [--scores bound,mean,oracle]
       [--budgets 16/32,16/16,...] [--recall-only]
("bound" scores min/max rounded outward to float8 as the engine stores them (msa.md); "bound_exact" the exact min/max,
the contract before session 8; "bound_max" / "bound_lse" rank blocks by the group's largest bound logit / log-sum-exp
of its bound logits, what-ifs that need no per-head softmax over all candidates; "bound_keys32" msa.md's score rounded
as the GPU kernels' 32-bit selection keys round it at 1M tokens, 9 mantissa bits, ties to the higher block id.)
"""

import argparse
import sys
import time

import torch

sys.path.insert(0, __import__("os").path.dirname(__file__))
from common import write_record  # noqa: E402

from m3.config import Config  # noqa: E402
from m3.eval.fidelity import attention_recall, capture, next_token_agreement, perplexity, stdlib_text  # noqa: E402
from m3.llm import LLM  # noqa: E402

BUDGETS = [(16, 32), (16, 16), (16, 8), (8, 16), (4, 8), (2, 4)]  # (window_blocks, topk_blocks)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--query-from", type=int, default=4096)
    ap.add_argument("--tail", type=int, default=1024, help="tokens scored for agreement and perplexity")
    ap.add_argument(
        "--scores",
        default="bound,mean,oracle",
        help="bound, mean, oracle, bound_exact, bound_max, bound_lse, bound_keys32",
    )
    ap.add_argument("--budgets", default=",".join(f"{w}/{k}" for w, k in BUDGETS), help="window/topk blocks, ...")
    ap.add_argument("--recall-only", action="store_true", help="skip next-token agreement and perplexity")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    budgets = [tuple(int(x) for x in b.split("/")) for b in args.budgets.split(",")]
    t0 = time.time()
    dense = LLM(attention="dense", max_model_len=args.tokens + 1, kv_cache_gb=2.0)
    ids = dense.tokenizer.encode(stdlib_text(args.tokens * 6), add_special_tokens=False)[: args.tokens]
    assert len(ids) == args.tokens, "not enough text"
    qk, hidden_dense = capture(dense, ids)
    print(f"dense capture: {time.time() - t0:.0f}s", flush=True)
    defaults = Config()
    configs = [
        dict(block_size=defaults.block_size, sink_blocks=defaults.sink_blocks, window_blocks=w, topk_blocks=k, score=s)
        for w, k in budgets
        for s in args.scores.split(",")
    ]
    per_layer = []
    for layer, (q, k) in enumerate(qk):
        per_layer.append(attention_recall(q, k, configs, args.query_from))
        print(f"layer {layer}: {configs[0]['score']} {budgets[0]} recall {per_layer[-1][0]:.4f}", flush=True)
    rows = []
    for c_idx, c in enumerate(configs):
        values = [layer_values[c_idx] for layer_values in per_layer]
        worst = min(range(len(values)), key=values.__getitem__)
        rows.append(
            {
                **c,
                "mean_recall": sum(values) / len(values),
                "worst_layer": worst,
                "worst_recall": values[worst],
                "per_layer": values,
            }
        )
    del qk
    fidelity = None if args.recall_only else tail_fidelity(dense, ids, hidden_dense, args.tokens, args.tail)
    record = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1, dequantised to float32)",
        "text": "Python standard library sources, sorted files concatenated",
        "tokens": args.tokens,
        "recall_query_positions": f">= {args.query_from}",
        "recall": rows,
        "msa_vs_dense_last_tokens": fidelity and {"tokens": args.tail, "knobs": "defaults", **fidelity},
        "seconds": round(time.time() - t0, 1),
    }
    path = write_record("msa_recall", record, args.out)
    print(f"\n{'window/topk':>12} {'score':>9} {'mean recall':>12} {'worst layer':>12}")
    for r in rows:
        print(
            f"{r['window_blocks']:>5}/{r['topk_blocks']:<6} {r['score']:>9} {r['mean_recall']:>12.4f} "
            f"{r['worst_recall']:>8.4f} (L{r['worst_layer']})"
        )
    if fidelity:
        print(f"MSA vs dense, last {args.tail} tokens: {fidelity}")
    print("wrote", path)


def tail_fidelity(dense, ids: list[int], hidden_dense: torch.Tensor, tokens: int, tail: int) -> dict:
    """Next-token agreement, KL and perplexity over the last `tail` tokens, MSA (defaults) vs dense."""
    msa = LLM(attention="msa", max_model_len=tokens + 1, kv_cache_gb=2.0)
    _, hidden_msa = capture(msa, ids)
    rows = slice(tokens - tail - 1, tokens - 1)
    head = dense.engine.runner.model
    with torch.inference_mode():
        logits_dense, logits_msa = head.logits(hidden_dense[rows]), head.logits(hidden_msa[rows])
    targets = torch.tensor(ids[tokens - tail :])
    fidelity = next_token_agreement(logits_dense, logits_msa)
    fidelity.update(ppl_dense=perplexity(logits_dense, targets), ppl_msa=perplexity(logits_msa, targets))
    fidelity["ppl_delta_pct"] = 100 * (fidelity["ppl_msa"] / fidelity["ppl_dense"] - 1)
    return fidelity


if __name__ == "__main__":
    main()
