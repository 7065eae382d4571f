"""Shared test fixtures: a tiny random Llama checkpoint (real architecture, SmolLM2 tokenizer) as a HF folder.

Import the fixture into a test folder's conftest.py: `from tests.fixtures import tiny_model_dir  # noqa: F401`.
"""

import json

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), hidden_size=96, max_position_embeddings=512)


@pytest.fixture(scope="session")
def tiny_model_dir_d32(tmp_path_factory):
    """The same with head_dim 32 (what the remap kernels need) and a 256-token trained length (for positions=auto)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama-d32"), hidden_size=192, max_position_embeddings=256)


def make_tiny_model(folder, *, hidden_size: int, max_position_embeddings: int) -> str:
    """A random 2-layer Llama with 6 query / 2 KV heads saved as a HF folder with the SmolLM2 tokenizer."""
    import transformers

    from m3.models.loader import default_model_path
    from m3.tokenizer import Tokenizer

    tok = Tokenizer.from_gguf(default_model_path())
    config = transformers.LlamaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden_size,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)  # peaky logits: greedy comparisons are not decided by rounding
    model.save_pretrained(folder, safe_serialization=True)
    tok._backend.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "chat_template": tok.chat_template})
    )
    return str(folder)


# MSA forced on at tiny sizes: 8-token blocks, sparse from the first token, a budget that drops blocks.
MSA_TINY = dict(attention="msa", block_size=8, dense_below=0, sink_blocks=1, window_blocks=1, topk_blocks=2)
