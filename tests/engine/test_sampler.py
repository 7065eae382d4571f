"""Sampler: greedy rows share one batched argmax; penalties still apply to their own rows."""

import torch

from m3.layers.sampler import Sampler
from m3.sampling_params import SamplingParams


def test_greedy_rows_batched_and_penalised_rows_apart():
    logits = torch.tensor([[0.0, 3.0, 2.9, 0.0], [0.0, 3.0, 2.9, 0.0], [5.0, 0.0, 0.0, 0.0]])
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, repetition_penalty=2.0),  # token 1 was seen: 3.0 / 2 < 2.9
        SamplingParams(temperature=0.0, logprobs=1),
    ]
    history = [[1], [1], [0]]
    tokens, logprobs = Sampler()(logits, params, history, [1, 1, 1], [None] * 3, torch.Generator().manual_seed(0))
    assert tokens == [1, 2, 0]
    assert logprobs[0] is None and logprobs[2]["token_id"] == 0 and logprobs[2]["top"][0][0] == 0
