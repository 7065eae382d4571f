"""Sampler: penalties, temperature, top-k / top-p / min-p, then a draw from each sequence's own generator.

Per-sequence generators make a seeded request reproducible whatever else shares its batches.
"""

import torch

from m3.sampling_params import SamplingParams


class Sampler:
    def __call__(
        self,
        logits: torch.Tensor,
        params: list[SamplingParams],
        token_ids: list[list[int]],
        num_prompt_tokens: list[int],
        generators: list[torch.Generator | None],
        default_generator: torch.Generator,
    ) -> tuple[list[int], list[dict | None]]:
        """logits: (B, V) float32. Returns the sampled token per row and, where asked, its logprobs entry."""
        logprobs_raw = torch.log_softmax(logits, dim=-1) if any(p.logprobs is not None for p in params) else None
        tokens, logprobs = [], []
        # greedy rows without penalties: one argmax and one device-to-host copy for the batch, not one per row
        plain = [p.is_greedy and not _has_penalties(p) for p in params]
        argmax = logits.argmax(dim=-1).tolist() if any(plain) else None
        for i, p in enumerate(params):
            if plain[i]:
                token = argmax[i]
            elif p.is_greedy:
                token = int(_apply_penalties(logits[i], p, token_ids[i], num_prompt_tokens[i]).argmax())
            else:
                row = _apply_penalties(logits[i], p, token_ids[i], num_prompt_tokens[i])
                probs = _filtered_probs(row / p.temperature, p)
                if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
                    token = int(row.argmax())  # degenerate distribution: never let one request break the step
                else:
                    g = generators[i] or default_generator
                    token = int(torch.multinomial(probs.cpu(), 1, generator=g))
            tokens.append(token)
            if p.logprobs is None:
                logprobs.append(None)
                continue
            lp = logprobs_raw[i]
            top = lp.topk(p.logprobs) if p.logprobs > 0 else None
            logprobs.append(
                {
                    "token_id": token,
                    "logprob": float(lp[token]),
                    "top": [(int(t), float(v)) for v, t in zip(top.values, top.indices)] if top is not None else [],
                }
            )
        return tokens, logprobs


def _has_penalties(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def _apply_penalties(row: torch.Tensor, p: SamplingParams, token_ids: list[int], num_prompt: int) -> torch.Tensor:
    if not _has_penalties(p):
        return row
    row = row.clone()
    if p.repetition_penalty != 1.0 and token_ids:
        seen = torch.tensor(sorted(set(token_ids)), device=row.device)
        vals = row[seen]
        row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    out = token_ids[num_prompt:]
    if out and (p.presence_penalty or p.frequency_penalty):
        ids, counts = torch.tensor(out, device=row.device).unique(return_counts=True)
        row[ids] -= p.presence_penalty + p.frequency_penalty * counts.to(row.dtype)
    return row


def _filtered_probs(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    if p.top_k > 0 and p.top_k < row.numel():
        kth = row.topk(p.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if p.min_p > 0:
        probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
    if p.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        cum = sorted_probs.cumsum(0)
        drop = cum - sorted_probs > p.top_p  # keep the smallest prefix reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return probs / probs.sum()
