"""LLM: the offline facade. generate() runs a batch of prompts to completion with continuous batching;
chat() renders conversations with the model's chat template first."""

from m3.config import Config
from m3.engine.llm_engine import LLMEngine
from m3.engine.outputs import RequestOutput
from m3.sampling_params import SamplingParams


class LLM:
    """`LLM(model="path/to/model.gguf", attention="msa", topk_blocks=32)`: any Config field as a keyword."""

    def __init__(self, model: str = "", config: Config | None = None, **kwargs):
        self.config = config or Config(model=model, **kwargs)
        self.engine = LLMEngine(self.config)
        self.tokenizer = self.engine.tokenizer

    def generate(
        self,
        prompts: str | list[str] | list[list[int]],
        params: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[RequestOutput]:
        """Complete each prompt (text or token ids); outputs come back in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params_list = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(params_list)} SamplingParams for {len(prompts)} prompts")
        ids = [self.engine.add_request(p, sp) for p, sp in zip(prompts, params_list)]
        done: dict[str, RequestOutput] = {}
        try:
            while self.engine.has_unfinished():
                for out in self.engine.step():
                    if out.finished:
                        done[out.request_id] = out
        finally:
            for rid in ids:
                if rid not in done:
                    self.engine.abort_request(rid)
        return [done[rid] for rid in ids]

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        params: SamplingParams | None = None,
    ) -> list[RequestOutput]:
        """messages: one conversation [{"role", "content"}, ...] or a list of them."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        # NOTE: a rendered template already holds its special tokens: encode it without adding BOS again.
        prompts = [
            self.tokenizer.encode(self.tokenizer.apply_chat_template(c), add_special_tokens=False)
            for c in conversations
        ]
        return self.generate(prompts, params)
