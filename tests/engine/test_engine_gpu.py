"""The engine on CUDA (Triton MSA kernels) against the CPU reference path, SmolLM2 with MSA forced on."""

import os

import pytest
import torch

from m3.eval.fidelity import stdlib_text
from m3.llm import LLM
from m3.sampling_params import SamplingParams

pytestmark = pytest.mark.gpu
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# MSA active from position 512 on, with a budget that drops most blocks of a ~2-3K-token prompt
KNOBS = dict(attention="msa", block_size=64, dense_below=512, sink_blocks=1, window_blocks=4, topk_blocks=4)


@requires_cuda
@pytest.mark.parametrize("positions", ["true", "remap"])
def test_gpu_greedy_tokens_equal_cpu_reference(positions):
    model = os.environ.get("M3_TEST_MODEL", "")  # "" = the embedded default GGUF
    text = stdlib_text(40_000)
    params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
    # float32 on both sides: the comparison is of the algorithm, not of bf16 rounding
    gpu = LLM(model, device="cuda", dtype="float32", positions=positions, **KNOBS)
    ids = gpu.tokenizer.encode(text, add_special_tokens=False)
    prompts = [ids[:1500], ids[2000:4600], ids[5000:7003]]  # lengths not multiples of 64, mixed in one batch
    out_gpu = gpu.generate(prompts, params)
    assert gpu.engine.runner.selected_share() < 0.5, "MSA must be active and sparse"
    cpu = LLM(model, device="cpu", dtype="float32", positions=positions, **KNOBS)
    out_cpu = cpu.generate(prompts, params)
    for a, b in zip(out_gpu, out_cpu):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids


@requires_cuda
@pytest.mark.parametrize("positions", ["true", "auto"])
def test_cuda_graph_decode_equals_eager(positions):
    # long decodes with a 1-block window: blocks filled during decode (summarised after each replay) leave the window
    # and are scored within the run; sequences finish at different steps, so batch slots and graph sizes change.
    # "auto" with max_model_len past the trained 8K: the first prompt decodes across the remap boundary (block 128).
    model = os.environ.get("M3_TEST_MODEL", "")
    knobs = {**KNOBS, "window_blocks": 1, "topk_blocks": 2, "max_model_len": 9000, "positions": positions}
    ids = None
    outs = []
    for graphs in (True, False):
        llm = LLM(model, device="cuda", dtype="float32", cuda_graphs=graphs, **knobs)
        if ids is None:
            ids = llm.tokenizer.encode(stdlib_text(60_000), add_special_tokens=False)
        prompts = [ids[:8150], ids[9000:11600], ids[12000:12700], ids[13000:13100]]
        params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in (200, 150, 90, 40)]
        outs.append([o.outputs[0].token_ids for o in llm.generate(prompts, params)])
        if graphs:
            assert llm.engine.runner._graphs, "decode steps must have replayed CUDA graphs"
            assert llm.engine.runner.selected_share() < 0.5
        del llm
        torch.cuda.empty_cache()
    assert outs[0] == outs[1]
