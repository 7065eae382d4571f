"""The engine's Triton path (run in Triton's CPU interpreter) against its reference path, token for token: a tiny
random model with MSA forced on, positions true, remap and auto (remapping only the blocks past the trained length,
so one step mixes both), chunked prefill and decode."""

import os

import pytest

pytest.importorskip("triton")
from m3.layers import attention  # noqa: E402
from m3.llm import LLM  # noqa: E402
from m3.sampling_params import SamplingParams  # noqa: E402

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter tests run without CUDA")

KNOBS = dict(attention="msa", block_size=16, dense_below=40, sink_blocks=1, window_blocks=2, topk_blocks=2)


@pytest.mark.parametrize("positions", ["true", "remap", "auto"])
def test_kernel_path_equals_reference_path(tiny_model_dir_d32, positions, monkeypatch):
    # the tiny model's trained length is 256: "auto" remaps the query blocks from 256 on, mid-prompt and mid-decode
    prompts = [list(range(100, 330)), list(range(400, 551))]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    config = dict(KNOBS, positions=positions, max_model_len=512, max_num_batched_tokens=96, device="cpu",
                  dtype="float32")  # fmt: skip
    ref = LLM(tiny_model_dir_d32, **config).generate(prompts, params)
    monkeypatch.setattr(attention, "use_kernels", lambda q: attention._kernels() is not None)
    llm = LLM(tiny_model_dir_d32, **config)
    out = llm.generate(prompts, params)
    assert llm.engine.runner.selected_share() < 0.9, "MSA must be active and sparse"
    for a, b in zip(out, ref):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
