"""ModelArgs: the shape of a checkpoint, read from GGUF metadata or a Hugging Face config.json.

One flat dataclass for the Llama/Mistral/Qwen2/Qwen3 family; the differences are three switches
(attention_bias, qk_norm, tie_word_embeddings). weight_names() is the exact state dict the loaders return.
"""

from dataclasses import dataclass

SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class ModelArgs:
    architecture: str  # "llama" | "mistral" | "qwen2" | "qwen3"
    # -- sizes --
    vocab_size: int  # rows of embed_tokens (may exceed the tokenizer's vocabulary: padding rows)
    hidden_size: int
    intermediate_size: int  # MLP width
    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (GQA when < num_heads)
    head_dim: int  # not always hidden_size // num_heads (qwen3)
    # -- numerics --
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None  # HF-style, e.g. {"rope_type": "llama3", "factor": 8.0, ...}; None = plain RoPE
    max_position_embeddings: int  # the trained context length
    # -- variants --
    tie_word_embeddings: bool  # lm_head shares embed_tokens (no lm_head.weight in the state dict)
    attention_bias: bool  # q/k/v projections have bias (qwen2)
    qk_norm: bool  # per-head RMSNorm on q and k before RoPE (qwen3)
    sliding_window: int | None = None  # mistral; informational only

    def __post_init__(self):
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer; got {getattr(self, name)!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim must be a positive even integer; got {self.head_dim}")

    def weight_names(self) -> list[str]:
        """The state dict keys, named as transformers names them for *ForCausalLM."""
        names = ["model.embed_tokens.weight", "model.norm.weight"]
        if not self.tie_word_embeddings:
            names.append("lm_head.weight")
        for i in range(self.num_layers):
            p = f"model.layers.{i}."
            names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
            names += [p + f"self_attn.{x}_proj.weight" for x in "qkvo"]
            names += [p + f"mlp.{x}_proj.weight" for x in ("gate", "up", "down")]
            if self.attention_bias:
                names += [p + f"self_attn.{x}_proj.bias" for x in "qkv"]
            if self.qk_norm:
                names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        return names


def check_weight_names(args: ModelArgs, state_dict: dict, source: str) -> None:
    """A user's checkpoint that is not the shape its metadata claims gets a ValueError naming the odd tensors."""
    expected = set(args.weight_names())
    missing, unexpected = sorted(expected - state_dict.keys()), sorted(state_dict.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"{source}: tensors do not match a {args.architecture} model with {args.num_layers} layers; "
            f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
