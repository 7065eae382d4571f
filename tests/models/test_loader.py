"""load_checkpoint against transformers: the default GGUF, tiny GGUFs of every quant type and GGUF architecture,
tiny random HF folders (plain, sharded, bf16, llama3 rope scaling), and the user errors."""

import json
import math
import os

import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter
from gguf.quants import quantize
from transformers.convert_slow_tokenizer import bytes_to_unicode

from m3.models.args import ModelArgs
from m3.models.loader import default_model_path, load_checkpoint


def assert_same_tensors(ours: dict, ref: dict, tied: bool, atol: float = 1e-6):
    ref = dict(ref)
    if tied:  # transformers keeps the shared matrix under both names; we return it once
        assert torch.equal(ref.pop("lm_head.weight"), ref["model.embed_tokens.weight"])
    assert sorted(ours) == sorted(ref)
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32, name
        assert tensor.shape == ref[name].shape, name
        assert (tensor - ref[name].float()).abs().max().item() <= atol, name


def transformers_gguf_state_dict(path: str) -> dict:
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    )
    return model.state_dict()


# -- the default model --


@pytest.fixture(scope="module")
def default_checkpoint(gguf_path):
    return load_checkpoint(None)


def test_default_model_path_is_the_packaged_gguf():
    path = default_model_path()
    assert path.endswith(".gguf") and os.path.isfile(path)


def test_default_gguf_args(default_checkpoint):
    args, _, tokenizer = default_checkpoint
    assert args == ModelArgs(
        architecture="llama",
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rms_norm_eps=args.rms_norm_eps,
        rope_theta=100000.0,
        rope_scaling=None,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        attention_bias=False,
        qk_norm=False,
    )
    assert math.isclose(args.rms_norm_eps, 1e-5, rel_tol=1e-6)
    assert tokenizer.vocab_size == 49152


def test_default_gguf_equals_transformers(default_checkpoint, gguf_path):
    args, state_dict, _ = default_checkpoint
    assert sorted(state_dict) == sorted(args.weight_names())
    assert_same_tensors(state_dict, transformers_gguf_state_dict(gguf_path), tied=True)


# -- tiny GGUFs: every supported architecture, a spread of quant types --

BYTE_TOKENS = list(bytes_to_unicode().values())


def llama3_rope_freqs(head_dim, theta, factor, low, high, old_len):
    # llama.cpp convert_hf_to_gguf.py, LlamaModel.generate_extra_tensors
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old_len / high:
            out.append(1.0)
        elif wavelen > old_len / low:
            out.append(factor)
        else:
            smooth = (old_len / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def q6_k_random(rows: int, cols: int, rng) -> np.ndarray:
    # gguf-py cannot quantize to Q6_K, but any bytes are a valid block once the fp16 scale d is finite
    blocks = rng.integers(0, 256, size=(rows, cols // 256, 210), dtype=np.uint8)
    blocks[..., 208:] = np.full((rows, cols // 256), 0.01, dtype=np.float16).view(np.uint8).reshape(rows, -1, 2)
    return blocks.reshape(rows, -1)


def write_tiny_gguf(path, arch, *, heads, kv_heads, pre, tied, rope_freqs=None, hidden=256, ffn=512, layers=2):
    rng = np.random.default_rng(0)
    head_dim = hidden // heads
    tokens = BYTE_TOKENS + ["Ġt", "he", "<|im_start|>", "<|im_end|>"]
    vocab = len(tokens)
    w = GGUFWriter(path, arch)
    w.add_name(f"tiny {arch}")
    w.add_block_count(layers)
    w.add_context_length(4096)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([1] * (vocab - 2) + [3, 3])
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(vocab - 2)
    w.add_eos_token_id(vocab - 1)

    def add(name, shape, qtype):
        x = rng.standard_normal(shape).astype(np.float32) * 0.1
        if qtype == Q.F32:
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        elif qtype == Q.Q6_K:
            w.add_tensor(name, q6_k_random(*shape, rng), raw_dtype=qtype)
        else:
            w.add_tensor(name, quantize(x, qtype), raw_dtype=qtype)

    add("token_embd.weight", (vocab, hidden), Q.Q8_0)
    add("output_norm.weight", (hidden,), Q.F32)
    if not tied:
        add("output.weight", (vocab, hidden), Q.Q6_K)
    if rope_freqs is not None:
        w.add_tensor("rope_freqs.weight", rope_freqs)
    for i in range(layers):
        add(f"blk.{i}.attn_norm.weight", (hidden,), Q.F32)
        add(f"blk.{i}.ffn_norm.weight", (hidden,), Q.F32)
        add(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden), Q.Q4_0)
        add(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden), Q.Q4_1)
        add(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden), Q.BF16)
        add(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim), Q.Q6_K)
        add(f"blk.{i}.ffn_gate.weight", (ffn, hidden), Q.F16)
        add(f"blk.{i}.ffn_up.weight", (ffn, hidden), Q.Q8_0)
        add(f"blk.{i}.ffn_down.weight", (hidden, ffn), Q.Q5_0)
        if arch == "qwen2":
            for x, rows in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
                add(f"blk.{i}.attn_{x}.bias", (rows * head_dim,), Q.F32)
        if arch == "qwen3":
            add(f"blk.{i}.attn_q_norm.weight", (head_dim,), Q.F32)
            add(f"blk.{i}.attn_k_norm.weight", (head_dim,), Q.F32)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


@pytest.mark.parametrize(
    "arch, heads, kv_heads, pre, tied",
    [
        ("llama", 4, 2, "llama-bpe", False),  # GQA: q and k rows are un-permuted with different head counts
        ("qwen2", 4, 2, "qwen2", True),
        ("qwen3", 2, 1, "qwen2", True),  # NOTE: transformers reads no head_dim for qwen3 GGUFs: keep it 128
    ],
)
def test_tiny_gguf_equals_transformers(tmp_path, arch, heads, kv_heads, pre, tied):
    path = str(tmp_path / f"tiny-{arch}.gguf")
    head_dim = 256 // heads
    rope_freqs = llama3_rope_freqs(head_dim, 500000.0, 8.0, 1.0, 4.0, 8192) if arch == "llama" else None
    write_tiny_gguf(path, arch, heads=heads, kv_heads=kv_heads, pre=pre, tied=tied, rope_freqs=rope_freqs)
    args, state_dict, tokenizer = load_checkpoint(path)
    assert (args.architecture, args.num_heads, args.num_kv_heads, args.head_dim) == (arch, heads, kv_heads, head_dim)
    assert (args.attention_bias, args.qk_norm, args.tie_word_embeddings) == (arch == "qwen2", arch == "qwen3", tied)
    assert args.rope_scaling == (LLAMA3_SCALING if arch == "llama" else None)
    assert_same_tensors(state_dict, transformers_gguf_state_dict(path), tied=tied)
    # llama.cpp adds BOS by default for llama-bpe vocabularies, not for qwen2 ones
    bos = [tokenizer.bos_token_id] if pre == "llama-bpe" else []
    assert tokenizer.encode("the") == bos + [tokenizer.encode("t", False)[0], len(BYTE_TOKENS) + 1]
    assert tokenizer.encode("the", add_special_tokens=False) == tokenizer.encode("the")[len(bos) :]


def test_gguf_rope_freqs_that_are_not_llama3_are_refused(tmp_path):
    path = str(tmp_path / "odd-rope.gguf")
    rope_freqs = llama3_rope_freqs(64, 500000.0, 8.0, 2.0, 4.0, 8192)  # low_freq_factor 2: not Llama 3's
    write_tiny_gguf(path, "llama", heads=4, kv_heads=2, pre="llama-bpe", tied=True, rope_freqs=rope_freqs)
    with pytest.raises(ValueError, match="rope_freqs"):
        load_checkpoint(path)


def test_gguf_unsupported_architecture(tmp_path):
    path = str(tmp_path / "gpt2.gguf")
    w = GGUFWriter(path, "gpt2")
    w.add_block_count(1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ValueError, match=r"'gpt2'.*llama"):
        load_checkpoint(path)


# -- Hugging Face folders --

HF_CASES = {
    "llama3-rope": (
        transformers.LlamaConfig,
        # NOTE: a copy: transformers writes rope_theta into the dict it is given
        dict(rope_scaling=dict(LLAMA3_SCALING), rope_theta=500000.0, max_position_embeddings=131072),
    ),
    "mistral": (transformers.MistralConfig, dict(sliding_window=64)),
    "qwen2-tied-sharded": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen3-bf16": (transformers.Qwen3Config, dict(head_dim=24)),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_hf_folder_equals_transformers(tmp_path, hf_gguf_tokenizer, case):
    config_cls, extra = HF_CASES[case]
    config = config_cls(
        vocab_size=len(hf_gguf_tokenizer),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **extra,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    if "bf16" in case:
        model = model.to(torch.bfloat16)
    folder = tmp_path / case
    model.save_pretrained(folder, max_shard_size="500KB" if "sharded" in case else "5GB")
    hf_gguf_tokenizer.save_pretrained(folder)
    assert os.path.isfile(folder / "model.safetensors.index.json") == ("sharded" in case)

    args, state_dict, tokenizer = load_checkpoint(str(folder))
    arch = config.model_type
    head_dim = extra.get("head_dim", 16)
    assert args.architecture == arch
    assert (args.hidden_size, args.intermediate_size, args.num_layers) == (64, 96, 2)
    assert (args.num_heads, args.num_kv_heads, args.head_dim, args.vocab_size) == (4, 2, head_dim, 49152)
    assert (args.attention_bias, args.qk_norm) == (arch == "qwen2", arch == "qwen3")
    assert args.tie_word_embeddings == config.tie_word_embeddings
    assert args.rope_theta == extra.get("rope_theta", 10000.0)
    assert args.rope_scaling == (LLAMA3_SCALING if "rope_scaling" in extra else None)
    assert args.max_position_embeddings == config.max_position_embeddings
    assert args.sliding_window == (64 if arch == "mistral" else None)
    assert_same_tensors(state_dict, model.float().state_dict(), tied=args.tie_word_embeddings, atol=0.0)

    text = "<|im_start|>user\nx  1 + 12 = 13? héllo 😀<|im_end|>"
    assert tokenizer.encode(text) == hf_gguf_tokenizer(text)["input_ids"]
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert tokenizer.apply_chat_template(messages) == hf_gguf_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )


def test_hf_rope_config_styles(tmp_path):
    # transformers 4 wrote rope_theta and rope_scaling (with "type"); transformers 5 writes rope_parameters
    from m3.models.hf_folder import hf_args

    base = dict(
        architectures=["Qwen2ForCausalLM"],
        vocab_size=10,
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    v4 = hf_args({**base, "rope_theta": 1e6, "rope_scaling": {"type": "yarn", "factor": 4.0}}, "v4")
    assert (v4.rope_theta, v4.rope_scaling) == (1e6, {"rope_type": "yarn", "factor": 4.0})
    v5 = hf_args({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}, "v5")
    assert (v5.rope_theta, v5.rope_scaling, v5.num_kv_heads, v5.attention_bias) == (1e6, None, 2, True)


# -- user errors --


def test_missing_path():
    with pytest.raises(FileNotFoundError, match="/no/such/model"):
        load_checkpoint("/no/such/model")


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"PK\x03\x04 not a gguf")
    with pytest.raises(ValueError, match="not a GGUF"):
        load_checkpoint(str(tmp_path / "model.bin"))


def test_folder_errors(tmp_path, hf_gguf_tokenizer):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(str(tmp_path))
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    config.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_checkpoint(str(tmp_path))
    hf_gguf_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(str(tmp_path))
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    load_checkpoint(str(tmp_path))  # now complete

    config_json = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config_json, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match=r"'GPT2LMHeadModel'.*LlamaForCausalLM"):
        load_checkpoint(str(tmp_path))
