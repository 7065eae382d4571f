"""Config: the one dataclass of engine settings, MSA knobs included.

Each field carries its help text in `metadata`, so the CLI flags and the README table are generated from here.
"""

from dataclasses import dataclass, field, fields


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    # -- model --
    model: str = _f("", "GGUF file or Hugging Face checkpoint folder; empty = embedded SmolLM2-135M-Instruct")
    dtype: str = _f("auto", "float32 | bfloat16 | float16 | auto (float32 on CPU, bfloat16 on CUDA)")
    device: str = _f("auto", "cpu | cuda | auto")
    max_model_len: int | None = _f(None, "longest sequence (prompt + output) in tokens; default: the model's own")
    # -- scheduler and KV cache --
    max_num_seqs: int = _f(16, "most sequences in one batch")
    max_num_batched_tokens: int = _f(2048, "most tokens in one step; long prompts are prefilled in chunks of this")
    num_kv_blocks: int | None = _f(None, "KV-cache pages; default: sized from kv_cache_gb")
    kv_cache_gb: float = _f(1.0, "memory for the paged KV cache when num_kv_blocks is unset")
    # -- MSA (see docs/msa.md) --
    attention: str = _f("msa", "msa | dense: msa uses sparse attention past dense_below tokens")
    block_size: int = _f(64, "tokens per KV block: the KV-cache page and the MSA selection unit")
    sink_blocks: int = _f(1, "first blocks of a sequence, always attended")
    window_blocks: int = _f(16, "most recent full blocks before the current one, always attended")
    topk_blocks: int = _f(32, "blocks chosen by score from the rest")
    dense_below: int = _f(4096, "context length at or below which attention is exact and dense")
    dense_layers: tuple[int, ...] = _f((), "layer indices that always use dense attention (comma-separated)")
    score: str = _f("bound", "block score: bound (Quest-style min/max bound) | mean (mean key)")
    positions: str = _f("auto", "true | remap | auto (remap only past the model's trained length)")
    # -- misc --
    cuda_graphs: bool = _f(True, "replay decode steps as CUDA graphs (CUDA only; off = eager, for debugging)")
    sampling_seed: int | None = _f(None, "seed for requests that bring none; default: fresh randomness each run")

    def __post_init__(self):
        if isinstance(self.dense_layers, str):
            self.dense_layers = tuple(int(x) for x in self.dense_layers.split(",") if x.strip())
        self.dense_layers = tuple(self.dense_layers)
        _choice("dtype", self.dtype, ("auto", "float32", "bfloat16", "float16"))
        _choice("device", self.device, ("auto", "cpu", "cuda"))
        _choice("attention", self.attention, ("msa", "dense"))
        _choice("score", self.score, ("bound", "mean"))
        _choice("positions", self.positions, ("true", "remap", "auto"))
        _at_least("max_num_seqs", self.max_num_seqs, 1)
        _at_least("block_size", self.block_size, 1)
        _at_least("max_num_batched_tokens", self.max_num_batched_tokens, self.block_size)
        _at_least("sink_blocks", self.sink_blocks, 0)
        _at_least("window_blocks", self.window_blocks, 0)
        _at_least("topk_blocks", self.topk_blocks, 0)
        _at_least("dense_below", self.dense_below, 0)
        if self.num_kv_blocks is not None:
            _at_least("num_kv_blocks", self.num_kv_blocks, 1)
        if self.max_model_len is not None:
            _at_least("max_model_len", self.max_model_len, 1)
        if self.kv_cache_gb <= 0:
            raise ValueError(f"kv_cache_gb must be > 0, got {self.kv_cache_gb}")

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}


def _choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def _at_least(name: str, value, low) -> None:
    if not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {value!r}")
