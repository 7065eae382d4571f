"""Our model implementation against Hugging Face transformers: logits on tiny random checkpoints of every family,
and greedy generation on the real default model (SmolLM2-135M-Instruct GGUF)."""

import os

import pytest
import torch
import transformers

from m3.config import Config
from m3.engine.model_runner import ModelRunner
from m3.engine.scheduler import ScheduledBatch
from m3.engine.sequence import Sequence
from m3.models.loader import default_model_path, load_checkpoint
from m3.sampling_params import SamplingParams

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama-rope3": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {"rope_scaling": LLAMA3_SCALING}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {}),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {"head_dim": 24, "tie_word_embeddings": True}),
}


def _prefill_logits(runner: ModelRunner, ids: list[int]) -> torch.Tensor:
    seq = Sequence("parity", 0, ids, SamplingParams(temperature=0), None)
    seq.block_table = list(range(-(-len(ids) // runner.block_size)))
    input_ids, meta, _ = runner.prepare(ScheduledBatch([seq], [len(ids)]))
    with torch.inference_mode():
        return runner.model.logits(runner.model(input_ids, meta.positions, meta))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
    config_cls, model_cls, extra = FAMILIES[family]
    config = config_cls(
        vocab_size=200,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=256,
        **extra,
    )
    torch.manual_seed(0)
    ref_model = model_cls(config).eval()
    with torch.no_grad():
        for p in ref_model.parameters():
            p.normal_(0.0, 0.2)
    ref_model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="200KB")  # sharded on purpose
    tokenizer_src = transformers.AutoTokenizer.from_pretrained(
        os.path.dirname(default_model_path()), gguf_file=os.path.basename(default_model_path())
    )
    tokenizer_src.save_pretrained(tmp_path)
    args, state_dict, _ = load_checkpoint(str(tmp_path))
    assert args.architecture == family.split("-")[0]
    runner = ModelRunner(
        Config(model=str(tmp_path), attention="dense", block_size=16, num_kv_blocks=8), args, state_dict, 128
    )
    ids = torch.randint(0, 200, (77,), generator=torch.Generator().manual_seed(1)).tolist()
    ours = _prefill_logits(runner, ids)
    with torch.no_grad():
        ref = ref_model(torch.tensor([ids])).logits[0]
    assert (ours - ref).abs().max().item() <= 1e-4


@pytest.fixture(scope="module")
def hf_smollm2():
    path = default_model_path()
    folder, name = os.path.split(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    return model


def test_greedy_generation_matches_transformers_on_default_model(hf_smollm2):
    from m3.llm import LLM

    llm = LLM(attention="dense")
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "user", "content": "Write a Python function that reverses a string."}],
        [{"role": "user", "content": "List three colours."}],
    ]
    prompts = [llm.tokenizer.apply_chat_template(c) for c in conversations] + ["The history of the Roman Empire"]
    params = SamplingParams(temperature=0.0, max_tokens=32)  # both stop after the end-of-turn token
    ours = llm.generate(prompts, params)
    for prompt, out in zip(prompts, ours):
        ids = torch.tensor([out.prompt_token_ids])
        with torch.no_grad():
            ref = hf_smollm2.generate(ids, max_new_tokens=32, do_sample=False)[0, ids.shape[1] :]
        assert out.outputs[0].token_ids == ref.tolist(), (prompt, out.outputs[0].token_ids, ref.tolist())
