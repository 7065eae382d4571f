"""Fidelity of MSA against dense attention on real text: per-layer attention recall, next-token agreement, KL
and perplexity. Text comes offline from the Python standard library's own source files."""

import math
import os
import sysconfig

import torch

from m3.kernels.kv_cache_ref import round_outward_fp8
from m3.kernels.msa_select_ref import block_scores_ref, select_blocks_ref


def stdlib_text(num_chars: int, skip_files: int = 0) -> str:
    """Concatenated standard-library sources (sorted, deterministic for a Python version)."""
    root = sysconfig.get_paths()["stdlib"]
    parts, total = [], 0
    names = sorted(n for n in os.listdir(root) if n.endswith(".py"))[skip_files:]
    for name in names:
        with open(os.path.join(root, name), encoding="utf-8", errors="replace") as f:
            text = f"# file: {name}\n" + f.read()
        parts.append(text)
        total += len(text)
        if total >= num_chars:
            break
    return "".join(parts)[:num_chars]


@torch.inference_mode()
def capture(llm, token_ids: list[int]) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Prefill token_ids; return per layer (q (T, H, D), k (T, Hkv, D)) post-RoPE, and the final hidden states
    (T, hidden) of every token, as the llm's own attention (dense or MSA) computed them."""
    layers = llm.engine.runner.model.attention_layers()
    per_layer = [([], []) for _ in layers]
    hidden = []

    def grab(i):
        def hook(module, args):
            q, _, k, _, _ = args
            per_layer[i][0].append(q.float().clone())
            per_layer[i][1].append(k.float().clone())

        return hook

    handles = [a.register_forward_pre_hook(grab(i)) for i, a in enumerate(layers)]
    # the model's output is the final norm's (which runs fused with the last residual add, not as a module call)
    model = llm.engine.runner.model
    handles.append(model.register_forward_hook(lambda m, a, out: hidden.append(out.float().clone())))
    try:
        from m3.sampling_params import SamplingParams

        llm.generate([token_ids], SamplingParams(temperature=0.0, max_tokens=1))
    finally:
        for h in handles:
            h.remove()
    qk = [(torch.cat(q), torch.cat(k)) for q, k in per_layer]
    return qk, torch.cat(hidden)[: len(token_ids)]


def attention_recall(q: torch.Tensor, k: torch.Tensor, configs: list[dict], query_from: int) -> list[float]:
    """Share of dense attention probability mass inside MSA's selected blocks, for each knob set in configs.

    q: (T, H, D), k: (T, Hkv, D) post-RoPE at positions 0..T-1; averaged over query tokens at positions
    >= query_from and over heads. A config holds block_size, sink_blocks, window_blocks, topk_blocks and score
    ("bound" | "mean" | "oracle"; "bound" over min/max rounded outward to float8 as the engine stores them;
    "bound_exact": over the exact min/max, the contract before session 8; oracle picks the blocks with the most true
    attention mass: the best any block selector can do at that budget). Dense probabilities are computed once per
    query block and shared.
    """
    block_size = configs[0]["block_size"]
    assert all(c["block_size"] == block_size for c in configs), "one block size per call"
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    group = num_heads // num_kv_heads
    num_full = num_tokens // block_size
    blocks = k[: num_full * block_size].view(num_full, block_size, num_kv_heads, head_dim)
    exact = (blocks.mean(1), blocks.amin(1), blocks.amax(1))
    stored = (exact[0], round_outward_fp8(exact[1], up=False), round_outward_fp8(exact[2], up=True))
    totals, count = [0.0] * len(configs), 0
    for i in range(query_from // block_size, -(-num_tokens // block_size)):
        start, stop = i * block_size, min((i + 1) * block_size, num_tokens)
        qi = q[start:stop]  # (S', H, D)
        s = torch.einsum("thd,lhd->htl", qi, k[:stop].repeat_interleave(group, 1)) / math.sqrt(head_dim)
        causal = torch.arange(stop)[None, :] <= torch.arange(start, stop)[:, None]
        p = torch.softmax(s.masked_fill(~causal[None], float("-inf")), -1)  # (H, S', L)
        mass = torch.zeros(num_heads, i + 1).index_add_(1, torch.arange(stop) // block_size, p.sum(1))  # (H, N)
        count += p.shape[0] * p.shape[1]
        for c_idx, c in enumerate(configs):
            sums = exact if c["score"] == "bound_exact" else stored
            chosen = _chosen_blocks(c, i, qi, mass, sums, num_kv_heads, group)  # (Hkv, N)
            totals[c_idx] += float((mass * chosen.repeat_interleave(group, 0)).sum())
    return [t / max(count, 1) for t in totals]


def _chosen_blocks(c: dict, i: int, qi, mass, summaries, num_kv_heads: int, group: int) -> torch.Tensor:
    sink, window, topk = c["sink_blocks"], c["window_blocks"], c["topk_blocks"]
    if c["score"] in GROUP_WHAT_IFS:
        return _chosen_local(c, i, qi, summaries, num_kv_heads)
    if c["score"] != "oracle":
        sel = select_blocks_ref(
            qi.mean(0, keepdim=True),
            torch.tensor([i]),
            *summaries,
            sink_blocks=sink,
            window_blocks=window,
            topk_blocks=topk,
            score=c["score"].removesuffix("_exact"),
        )[0]  # (Hkv, K)
        chosen = torch.zeros(num_kv_heads, i + 1, dtype=torch.bool)
        for h in range(num_kv_heads):
            chosen[h, sel[h][sel[h] >= 0]] = True
        return chosen
    return _forced_and_top(i, sink, window, topk, num_kv_heads, lambda: mass.view(num_kv_heads, group, -1).sum(1))


def _forced_and_top(i: int, sink: int, window: int, topk: int, num_kv_heads: int, score_of) -> torch.Tensor:
    """(Hkv, i+1) bool: sinks, window and current block i, plus the topk other blocks by score_of() (Hkv, i+1)."""
    forced = torch.zeros(i + 1, dtype=torch.bool)
    forced[: min(sink, i)] = True
    forced[max(sink, i - window) :] = True
    forced[i] = True  # (the current block, also when i < sink)
    chosen = forced[None].repeat(num_kv_heads, 1)
    num_cand = int((~forced).sum())
    if num_cand and topk:
        score = score_of().masked_fill(forced[None], float("-inf"))
        chosen.scatter_(1, score.topk(min(topk, num_cand), dim=1).indices, True)
    return chosen


def next_token_agreement(logits_a: torch.Tensor, logits_b: torch.Tensor) -> dict:
    """Top-1 agreement and mean KL(a || b) between two (T, V) logit tensors over the same tokens."""
    la, lb = torch.log_softmax(logits_a.float(), -1), torch.log_softmax(logits_b.float(), -1)
    kl = (la.exp() * (la - lb)).sum(-1)
    return {"top1_agreement": float((la.argmax(-1) == lb.argmax(-1)).float().mean()), "kl": float(kl.mean())}


def perplexity(logits: torch.Tensor, next_ids: torch.Tensor) -> float:
    """exp(mean NLL) of next_ids (T,) under logits (T, V)."""
    return float(torch.nn.functional.cross_entropy(logits.float(), next_ids).exp())


KEYS32_ID_BITS = 14  # the GPU kernels' 32-bit selection keys at 1M tokens (S=64): 9 mantissa bits of the score


def _keys32(s: torch.Tensor, c: dict) -> torch.Tensor:
    """msa.md's score (softmax over the candidates, summed over the group) ranked as the GPU kernels' 32-bit keys
    rank it: float bits rounded down to 31 - KEYS32_ID_BITS bits, ties to the higher block id."""
    j = torch.arange(s.shape[-1])
    cand = (j >= c["sink_blocks"]) & (j < s.shape[-1] - c["window_blocks"])
    p = torch.softmax(s.masked_fill(~cand, float("-inf")), -1).nan_to_num(0.0).sum(1)  # (Hkv, i)
    return ((p.view(torch.int32).long() >> KEYS32_ID_BITS) * 2**KEYS32_ID_BITS + j).double()


# what-ifs: scores each block can get without the per-head softmax over all candidates (msa.md sums softmax
# probabilities over the group, which needs every candidate's logit first), and msa.md's score at the GPU keys' grid
GROUP_WHAT_IFS = {
    "bound_max": lambda s, c: s.amax(1),  # the group's largest bound logit
    "bound_lse": lambda s, c: torch.logsumexp(s, 1),  # log sum_g exp(logit), unnormalised over the candidates
    "bound_keys32": _keys32,
}


def _chosen_local(c: dict, i: int, qi, summaries, num_kv_heads: int) -> torch.Tensor:
    def score_of():
        s = block_scores_ref(qi.mean(0, keepdim=True), *summaries, "bound")[0][..., :i]  # (Hkv, G, i)
        return torch.nn.functional.pad(GROUP_WHAT_IFS[c["score"]](s, c), (0, 1))  # block i: forced anyway

    return _forced_and_top(i, c["sink_blocks"], c["window_blocks"], c["topk_blocks"], num_kv_heads, score_of)
