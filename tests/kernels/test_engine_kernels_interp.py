"""The engine's Triton path (run in Triton's CPU interpreter) against its reference path, token for token: a tiny
random model with MSA forced on, positions true, remap and auto (remapping only the blocks past the trained length,
so one step mixes both), chunked prefill and decode."""

import os

import pytest
import torch

pytest.importorskip("triton")
from m3.layers import triton_ops  # noqa: E402
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
    monkeypatch.setattr(triton_ops, "use_kernels", lambda x: triton_ops.kernels() is not None)
    llm = LLM(tiny_model_dir_d32, **config)
    out = llm.generate(prompts, params)
    assert llm.engine.runner.selected_share() < 0.9, "MSA must be active and sparse"
    for a, b in zip(out, ref):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


class _EagerGraph:
    """Stands in for a CUDA graph on the CPU: replay() reruns the captured step into the same output tensor."""

    def __init__(self, runner, size, remap_from):
        self.step = lambda: runner._graph_forward(size, remap_from)
        self.out = self.step()

    def replay(self):
        self.out.copy_(self.step())


@pytest.mark.parametrize("positions", ["true", "auto"])
def test_graph_decode_path_equals_reference_path(tiny_model_dir_d32, positions, monkeypatch):
    # the CUDA-graph decode plumbing (static buffers, padded batch sizes, block-table tails, remap key, blocks
    # summarised after the replay), with eager replays: sequences of different lengths finish at different steps and
    # decode long enough for blocks filled during decode to leave the 2-block window and be scored
    from m3.engine.model_runner import ModelRunner

    prompts = [list(range(100, 330)), list(range(400, 551)), list(range(600, 645))]
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (70, 50, 20)]
    # layer 1 dense: its page lists span every block up to the static table width
    config = dict(KNOBS, positions=positions, max_model_len=512, max_num_batched_tokens=96, device="cpu",
                  dtype="float32", dense_layers=(1,))  # fmt: skip
    ref = LLM(tiny_model_dir_d32, **config).generate(prompts, params)
    monkeypatch.setattr(triton_ops, "use_kernels", lambda x: triton_ops.kernels() is not None)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)
    monkeypatch.setattr(ModelRunner, "_capture", lambda self, size, rf: ((g := _EagerGraph(self, size, rf)), g.out))
    llm = LLM(tiny_model_dir_d32, **config)
    llm.engine.runner.use_graphs = True
    out = llm.generate(prompts, params)
    graphs = llm.engine.runner._graphs
    assert {size for size, _ in graphs} >= {1, 2, 4}, "the batch shrinks as sequences finish: several sizes replay"
    if positions == "auto":
        # decode crosses the trained length (block 16): first no row remaps, then some (16), then all (0)
        assert {rf for _, rf in graphs} == {None, 16, 0}
    for a, b in zip(out, ref):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
