"""SamplingParams: per-request generation knobs, validated on construction (errors name the field and limit)."""

from dataclasses import dataclass, field, fields


def _f(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class SamplingParams:
    temperature: float = _f(1.0, "0 = greedy (so is anything below 1e-3); higher = more random (0 to 2)")
    top_p: float = _f(1.0, "nucleus sampling: keep the smallest set of tokens with this much probability (0, 1]")
    top_k: int = _f(0, "keep only the k most likely tokens; 0 = off")
    min_p: float = _f(0.0, "drop tokens below min_p times the top token's probability [0, 1]")
    max_tokens: int = _f(256, "most tokens to generate")
    stop: list[str] = _f(None, "strings that end generation; not included in the output")
    stop_token_ids: list[int] = _f(None, "token ids that end generation (besides the model's end-of-sequence)")
    ignore_eos: bool = _f(False, "keep generating past the end-of-sequence token")
    seed: int | None = _f(None, "per-request seed: the same seed and prompt give the same output")
    presence_penalty: float = _f(0.0, "subtract this from logits of tokens already generated (-2 to 2)")
    frequency_penalty: float = _f(0.0, "subtract this times the count of each generated token (-2 to 2)")
    repetition_penalty: float = _f(1.0, "divide positive / multiply negative logits of seen tokens (> 0; 1 = off)")
    n: int = _f(1, "completions to generate for the prompt")
    logprobs: int | None = _f(None, "return the log-probability of each sampled token and this many top alternatives")

    def __post_init__(self):
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        _range("temperature", self.temperature, 0.0, 2.0)
        _range("top_p", self.top_p, 0.0, 1.0, low_open=True)
        _range("min_p", self.min_p, 0.0, 1.0)
        _range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _range("repetition_penalty", self.repetition_penalty, 0.01, 10.0)
        _int("top_k", self.top_k, 0)
        _int("max_tokens", self.max_tokens, 1)
        _int("n", self.n, 1, 128)
        if self.logprobs is not None:
            _int("logprobs", self.logprobs, 0, 20)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be a list of non-empty strings")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer; got {self.seed!r}")

    @property
    def is_greedy(self) -> bool:
        # NOTE: a temperature this small is greedy in effect, and dividing by it overflows the logits
        return self.temperature < 1e-3

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}


def _range(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    ok = isinstance(value, int | float) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be a number in {bracket}{low}, {high}]; got {value!r}")


def _int(name: str, value, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        limit = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {limit}; got {value!r}")
