"""What the engine reports per request: RequestOutput with one CompletionOutput per sampled completion."""

from dataclasses import dataclass, field


@dataclass
class CompletionOutput:
    index: int
    text: str  # everything generated so far (stop strings removed)
    token_ids: list[int]
    delta_text: str = ""  # new text since the previous report (streaming)
    delta_token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # stop | length | abort
    logprobs: list[dict] | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_computed_prompt_tokens: int = 0  # prefill progress (of len(prompt_token_ids))
    num_preemptions: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_generated_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)
