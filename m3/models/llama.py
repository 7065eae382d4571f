"""The Llama family in one file: Llama (incl. Llama-3 rope scaling), Mistral, SmolLM2, Qwen2/2.5 (qkv bias) and
Qwen3 (q/k RMSNorm). Parameter names match Hugging Face transformers, so checkpoints load by name.
"""

import torch
from torch import nn

from m3.kernels.fused_ref import silu_mul_ref
from m3.layers import triton_ops
from m3.layers.attention import AttentionMetadata, MSAParams, PagedAttention
from m3.layers.norm import RMSNorm
from m3.layers.rotary import RotaryEmbedding
from m3.models.args import SUPPORTED_ARCHITECTURES, ModelArgs


class SelfAttention(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int, msa: MSAParams, rotary: RotaryEmbedding):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        bias = args.attention_bias
        self.q_proj = nn.Linear(args.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(args.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(args.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, args.hidden_size, bias=False)
        if args.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, args.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, args.rms_norm_eps)
        self.qk_norm = args.qk_norm
        self.rotary = rotary
        self.attn = PagedAttention(layer_idx, self.num_heads, self.num_kv_heads, self.head_dim, msa, rotary)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        q = self.q_proj(x).view(-1, self.num_heads, self.head_dim)  # (T, H, D)
        k = self.k_proj(x).view(-1, self.num_kv_heads, self.head_dim)  # (T, Hkv, D)
        v = self.v_proj(x).view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q_raw = q
        q, k = self.rotary(q, positions), self.rotary(k, positions)
        o = self.attn(q, q_raw, k, v, meta)  # (T, H, D)
        return self.o_proj(o.flatten(1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        act = triton_ops.kernels().silu_mul(gate, up) if triton_ops.use_kernels(x) else silu_mul_ref(gate, up)
        return self.down_proj(act)


class DecoderLayer(nn.Module):
    def __init__(self, args: ModelArgs, layer_idx: int, msa: MSAParams, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = SelfAttention(args, layer_idx, msa, rotary)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def forward(
        self, x: torch.Tensor, delta: torch.Tensor | None, positions: torch.Tensor, meta: AttentionMetadata
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual stream x and the previous layer's output delta (None in the first layer) -> the residual stream
        before this layer's MLP output, and that output (the next norm adds them in the same pass)."""
        x, h = (x, self.input_layernorm(x)) if delta is None else self.input_layernorm.add(x, delta)
        x, h = self.post_attention_layernorm.add(x, self.self_attn(h, positions, meta))
        return x, self.mlp(h)


class Backbone(nn.Module):
    def __init__(self, args: ModelArgs, msa_per_layer: list[MSAParams]):
        super().__init__()
        rotary = RotaryEmbedding(args.head_dim, args.rope_theta, args.rope_scaling)
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(args, i, msa_per_layer[i], rotary) for i in range(args.num_layers))
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class CausalLM(nn.Module):
    """Token ids in, hidden states out; `logits()` applies the LM head to the rows that need sampling."""

    def __init__(self, args: ModelArgs, msa_per_layer: list[MSAParams]):
        super().__init__()
        if args.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {args.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        self.args = args
        self.model = Backbone(args, msa_per_layer)
        self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        if args.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """input_ids, positions: (T,) -> hidden (T, hidden_size) after the final norm."""
        x, delta = self.model.embed_tokens(input_ids), None
        for layer in self.model.layers:
            x, delta = layer(x, delta, positions, meta)
        return self.model.norm.add(x, delta)[1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def attention_layers(self) -> list[PagedAttention]:
        return [layer.self_attn.attn for layer in self.model.layers]

    def load_weights(self, state_dict: dict[str, torch.Tensor]):
        """Copy HF-named tensors in; names missing or unexpected raise with the list of them."""
        if self.args.tie_word_embeddings:
            # NOTE: re-tie here: to_empty() after building on the meta device unties shared parameters.
            self.lm_head.weight = self.model.embed_tokens.weight
        own = dict(self.named_parameters())
        if self.args.tie_word_embeddings:
            own.pop("lm_head.weight", None)
            state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
        missing = sorted(set(own) - set(state_dict))
        unexpected = sorted(set(state_dict) - set(own))
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the model: missing {missing[:8]}, unexpected {unexpected[:8]}")
        with torch.no_grad():
            for name, tensor in state_dict.items():
                param = own[name]
                if param.shape != tensor.shape:
                    raise ValueError(
                        f"{name}: checkpoint shape {tuple(tensor.shape)} != model shape {tuple(param.shape)}"
                    )
                param.copy_(tensor)
