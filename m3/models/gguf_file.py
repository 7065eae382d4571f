"""Reading a GGUF file: ModelArgs from its metadata and float32 tensors under Hugging Face names.

Dequantisation is gguf-py's (any type it knows: F32, F16, BF16, Q4_0, Q4_1, Q8_0, k-quants ...). For the "llama"
architecture llama.cpp's converter interleaves the two rotary halves of every q/k head; we undo that so the weights
fit transformers' rotate_half RoPE. Llama-3 rope scaling is stored as a `rope_freqs` tensor and is read back into
the HF rope_scaling dict.
"""

import math

import numpy as np
import torch
from gguf import GGUFReader
from gguf.quants import dequantize

from m3.models.args import ModelArgs, check_weight_names

GGUF_ARCHITECTURES = ("llama", "qwen2", "qwen3")

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_NAMES = {  # blk.{i}.<gguf> -> model.layers.{i}.<hf>
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def read_field(reader: GGUFReader, key: str, default=None):
    """A metadata value as a Python str / int / float / bool / list, or default when the key is absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_args(reader: GGUFReader, path: str) -> ModelArgs:
    arch = read_field(reader, "general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{path}: unsupported GGUF architecture {arch!r}; supported: {', '.join(GGUF_ARCHITECTURES)}")
    tensors = {t.name: t for t in reader.tensors}
    for name in ("token_embd.weight", "blk.0.attn_q.weight"):
        if name not in tensors:
            raise ValueError(f"{path}: GGUF file lacks the tensor {name}")

    def key(name, default=None):
        value = read_field(reader, f"{arch}.{name}", default)
        if value is None:
            raise ValueError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    num_heads = key("attention.head_count")
    # NOTE: the shapes are ggml's (ne0 = input features first); q rows = num_heads * head_dim.
    head_dim = (
        read_field(reader, f"{arch}.attention.key_length") or int(tensors["blk.0.attn_q.weight"].shape[1]) // num_heads
    )
    rope_dim = read_field(reader, f"{arch}.rope.dimension_count", head_dim)
    if rope_dim != head_dim:
        raise ValueError(
            f"{path}: rope dimension {rope_dim} != head_dim {head_dim}; partial rotary embeddings are unsupported"
        )
    rope_theta = float(key("rope.freq_base", 10000.0))
    name = str(read_field(reader, "general.name", "")).lower()
    return ModelArgs(
        architecture="mistral" if arch == "llama" and "mistral" in name else arch,
        vocab_size=int(tensors["token_embd.weight"].shape[1]),
        hidden_size=key("embedding_length"),
        intermediate_size=key("feed_forward_length"),
        num_layers=key("block_count"),
        num_heads=num_heads,
        num_kv_heads=key("attention.head_count_kv", num_heads),
        head_dim=head_dim,
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon")),
        rope_theta=rope_theta,
        rope_scaling=_rope_scaling(reader, arch, head_dim, rope_theta, path),
        max_position_embeddings=key("context_length"),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias="blk.0.attn_q.bias" in tensors,
        qk_norm="blk.0.attn_q_norm.weight" in tensors,
        sliding_window=read_field(reader, f"{arch}.attention.sliding_window"),
    )


def gguf_state_dict(reader: GGUFReader, args: ModelArgs, path: str) -> dict[str, torch.Tensor]:
    permuted = read_field(reader, "general.architecture") == "llama"
    state_dict = {}
    for tensor in reader.tensors:
        if tensor.name == "rope_freqs.weight":  # already folded into args.rope_scaling
            continue
        hf_name = _hf_name(tensor.name)
        if hf_name is None:
            raise ValueError(f"{path}: unexpected GGUF tensor {tensor.name!r} for a {args.architecture} model")
        # NOTE: numpy shapes are ggml's reversed: (out_features, in_features), as torch wants.
        weight = dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape.tolist())))
        weight = torch.from_numpy(np.require(weight, np.float32, ["C", "W"]))
        if permuted and ".attn_q." in tensor.name:
            weight = _unpermute_rotary_rows(weight, args.num_heads)
        elif permuted and ".attn_k." in tensor.name:
            weight = _unpermute_rotary_rows(weight, args.num_kv_heads)
        state_dict[hf_name] = weight
    check_weight_names(args, state_dict, path)
    return state_dict


def _llama3_rope_factors(head_dim: int, rope_theta: float, scaling: dict) -> torch.Tensor:
    """The per-frequency divisors llama.cpp's converter stores as `rope_freqs.weight` for Llama-3 scaling. (D/2,)"""
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi * rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    smooth = (old_len / wavelen - low) / (high - low)
    mid = 1 / ((1 - smooth) / factor + smooth)
    out = torch.where(wavelen < old_len / high, 1.0, torch.where(wavelen > old_len / low, factor, mid))
    return out.float()


def _hf_name(gguf_name: str) -> str | None:
    parts = gguf_name.split(".")
    if len(parts) == 2 and parts[0] in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[parts[0]]}.{parts[1]}"
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def _unpermute_rotary_rows(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    # llama.cpp stores each head's rows as (D/2, 2) pairs (GPT-J style); HF wants (2, D/2) halves (rotate_half).
    return w.reshape(num_heads, -1, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape).contiguous()


def _rope_scaling(reader: GGUFReader, arch: str, head_dim: int, rope_theta: float, path: str) -> dict | None:
    kind = read_field(reader, f"{arch}.rope.scaling.type", "none")
    factor = read_field(reader, f"{arch}.rope.scaling.factor") or read_field(reader, f"{arch}.rope.scale_linear")
    original = read_field(reader, f"{arch}.rope.scaling.original_context_length")
    rope_freqs = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if rope_freqs is not None:
        # Llama 3.1/3.2 write no scaling keys, only the factors; recover the HF dict and check it reproduces them.
        stored = torch.from_numpy(dequantize(rope_freqs.data, rope_freqs.tensor_type).reshape(-1).copy())
        scaling = {
            "rope_type": "llama3",
            "factor": float(stored.max()),
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": int(original or 8192),
        }
        if stored.shape != (head_dim // 2,) or not torch.allclose(
            stored, _llama3_rope_factors(head_dim, rope_theta, scaling), rtol=1e-4
        ):
            raise ValueError(f"{path}: rope_freqs.weight does not match Llama-3 rope scaling {scaling}")
        return scaling
    if kind not in ("none", "linear", "yarn"):
        raise ValueError(f"{path}: unsupported GGUF rope scaling type {kind!r}; supported: none, linear, yarn, llama3")
    if not factor or factor == 1.0:
        return None
    if kind == "yarn":
        original = original or read_field(reader, f"{arch}.context_length")
        return {"rope_type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original)}
    return {"rope_type": "linear", "factor": float(factor)}
