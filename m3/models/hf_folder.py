"""Reading a Hugging Face checkpoint folder: config.json -> ModelArgs, *.safetensors -> float32 tensors.

Both config styles are read: transformers 4 (`rope_theta` + `rope_scaling`) and 5 (`rope_parameters`). Missing
optional fields take the defaults of transformers' own config classes, so a folder means what it means there.
"""

import json
import os

import torch
from safetensors import safe_open

from m3.models.args import ModelArgs, check_weight_names

HF_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
# transformers' defaults for fields a config.json may leave out
_DEFAULT_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "qwen3": 32768}


def read_json(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder}: missing {name}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def hf_args(config: dict, folder: str) -> ModelArgs:
    arch = _architecture(config, folder)

    def need(key):
        if config.get(key) is None:
            raise ValueError(f"{folder}/config.json lacks {key!r}")
        return config[key]

    if config.get("mlp_bias"):
        raise ValueError(f"{folder}/config.json: mlp_bias=true is unsupported")
    num_heads = need("num_attention_heads")
    rope_theta, rope_scaling = _rope(config)
    return ModelArgs(
        architecture=arch,
        vocab_size=need("vocab_size"),
        hidden_size=need("hidden_size"),
        intermediate_size=need("intermediate_size"),
        num_layers=need("num_hidden_layers"),
        num_heads=num_heads,
        num_kv_heads=config.get("num_key_value_heads") or num_heads,
        # NOTE: Qwen3Config defaults head_dim to 128, not hidden_size // heads.
        head_dim=config.get("head_dim") or (128 if arch == "qwen3" else need("hidden_size") // num_heads),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        max_position_embeddings=config.get("max_position_embeddings") or _DEFAULT_MAX_POSITIONS[arch],
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        attention_bias=arch == "qwen2" or bool(config.get("attention_bias", False)),
        qk_norm=arch == "qwen3",
        sliding_window=config.get("sliding_window") if arch == "mistral" else None,
    )


def hf_state_dict(folder: str, args: ModelArgs) -> dict[str, torch.Tensor]:
    state_dict = {}
    for file in _weight_files(folder):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if name.endswith("rotary_emb.inv_freq") or (name == "lm_head.weight" and args.tie_word_embeddings):
                    continue  # old checkpoints stored the RoPE table; tied checkpoints may store the shared matrix
                state_dict[name] = f.get_tensor(name).float()
    check_weight_names(args, state_dict, folder)
    return state_dict


def _architecture(config: dict, folder: str) -> str:
    names = config.get("architectures") or []
    supported = ", ".join(HF_ARCHITECTURES)
    if names:
        if names[0] not in HF_ARCHITECTURES:
            raise ValueError(f"{folder}: unsupported architecture {names[0]!r}; supported: {supported}")
        return HF_ARCHITECTURES[names[0]]
    model_type = config.get("model_type")
    if model_type not in HF_ARCHITECTURES.values():
        raise ValueError(f"{folder}: unsupported model_type {model_type!r}; supported: {supported}")
    return model_type


def _rope(config: dict) -> tuple[float, dict | None]:
    params = dict(config.get("rope_parameters") or {})  # transformers 5
    scaling = dict(config.get("rope_scaling") or params)  # transformers 4 keeps rope_theta outside
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    kind = scaling.pop("rope_type", scaling.pop("type", "default"))
    scaling.pop("type", None)
    scaling.pop("rope_theta", None)
    return theta, None if kind == "default" else {"rope_type": kind, **scaling}


def _weight_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(folder, s) for s in shards]
        for file in files:
            if not os.path.isfile(file):
                raise FileNotFoundError(
                    f"{folder}: missing {os.path.basename(file)} (listed in {os.path.basename(index)})"
                )
        return files
    files = sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder}: missing model.safetensors (only safetensors weights are supported)")
    return files
