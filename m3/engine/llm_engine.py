"""LLMEngine: the synchronous core. add_request() validates and queues; step() schedules, runs the model once,
samples, detokenises, applies stop conditions and reports what changed."""

import itertools
import time

from m3.config import Config
from m3.engine.block_manager import BlockManager
from m3.engine.model_runner import ModelRunner
from m3.engine.outputs import CompletionOutput, RequestOutput
from m3.engine.scheduler import Scheduler
from m3.engine.sequence import Sequence
from m3.models.loader import load_checkpoint
from m3.sampling_params import SamplingParams


class _Request:
    def __init__(self, request_id: str, prompt_ids: list[int], seqs: list[Sequence]):
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.seqs = seqs
        self.sent_text = [""] * len(seqs)  # text already reported per completion
        self.sent_tokens = [0] * len(seqs)
        self.arrival = time.monotonic()


class LLMEngine:
    def __init__(self, config: Config):
        self.config = config
        self.args, state_dict, self.tokenizer = load_checkpoint(config.model or None)
        self.max_model_len = config.max_model_len or self.args.max_position_embeddings
        self.runner = ModelRunner(config, self.args, state_dict, self.max_model_len)
        del state_dict
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.requests: dict[str, _Request] = {}
        self._counter = itertools.count()
        self.num_steps = 0

    # -- requests --
    def add_request(
        self, prompt: str | list[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> str:
        """Queue a prompt (text or token ids). Raises ValueError naming the field for bad input."""
        params = params or SamplingParams()
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not prompt_ids:
            raise ValueError("prompt is empty: give at least one token")
        if any(not isinstance(t, int) or not 0 <= t < self.args.vocab_size for t in prompt_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {self.args.vocab_size})")
        total = len(prompt_ids) + params.max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds the "
                f"model's context limit max_model_len={self.max_model_len}"
            )
        request_id = request_id or f"req-{next(self._counter)}"
        if request_id in self.requests:
            raise ValueError(f"request_id {request_id!r} is already running")
        seqs = []
        for i in range(params.n):
            seed = None if params.seed is None else params.seed + i
            seqs.append(Sequence(request_id, i, prompt_ids, params, seed))
        self.requests[request_id] = _Request(request_id, prompt_ids, seqs)
        for seq in seqs:
            self.scheduler.add(seq)
        return request_id

    def abort_request(self, request_id: str) -> RequestOutput | None:
        """Stop a request now and free its pages; returns its final output (finish_reason "abort")."""
        req = self.requests.pop(request_id, None)
        if req is None:
            return None
        self.scheduler.abort(request_id)
        for seq in req.seqs:
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
        return self._report(req)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # -- the step --
    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if not batch.seqs:
            return []
        results = self.runner.run(batch)
        self.num_steps += 1
        touched: dict[str, _Request] = {}
        for seq, n, result in zip(batch.seqs, batch.num_tokens, results):
            seq.num_computed_tokens += n
            req = self.requests[seq.request_id]
            touched[req.request_id] = req
            if result is None:
                continue
            token, logprobs = result
            seq.token_ids.append(token)
            if logprobs is not None:
                seq.logprobs.append(logprobs)
            self._check_stop(seq, token)
        outputs = []
        for req in touched.values():
            outputs.append(self._report(req))
            if all(s.is_finished for s in req.seqs):
                del self.requests[req.request_id]
        return outputs

    def _check_stop(self, seq: Sequence, token: int):
        p = seq.params
        is_stop_token = token in p.stop_token_ids or (not p.ignore_eos and token in self.tokenizer.stop_token_ids)
        if is_stop_token:
            seq.text = self.tokenizer.decode(seq.output_ids[:-1])
            return self._finish(seq, "stop")
        seq.text = self.tokenizer.decode(seq.output_ids)
        if p.stop:
            # NOTE: search only the tail where a new match can start; earlier text was checked before.
            tail_from = max(0, len(seq.text) - max(map(len, p.stop)) - 16)
            hits = [i for i in (seq.text.find(s, tail_from) for s in p.stop) if i >= 0]
            if hits:
                seq.text = seq.text[: min(hits)]
                return self._finish(seq, "stop")
        if seq.num_output_tokens >= p.max_tokens or len(seq) >= self.max_model_len:
            return self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str):
        seq.finish_reason = reason
        self.scheduler.finish(seq)

    def _report(self, req: _Request) -> RequestOutput:
        outs = []
        for i, seq in enumerate(req.seqs):
            text = seq.text
            if seq.finish_reason is None:
                text = _stable_prefix(text, seq.params.stop)
            delta = text[len(req.sent_text[i]) :] if text.startswith(req.sent_text[i]) else ""
            if delta:
                req.sent_text[i] = text
            ids = seq.output_ids
            new_ids = ids[req.sent_tokens[i] :]
            req.sent_tokens[i] = len(ids)
            outs.append(
                CompletionOutput(
                    index=seq.index,
                    text=req.sent_text[i] if seq.finish_reason is None else text,
                    token_ids=list(ids),
                    delta_text=delta,
                    delta_token_ids=new_ids,
                    finish_reason=seq.finish_reason,
                    logprobs=list(seq.logprobs) if seq.params.logprobs is not None else None,
                )
            )
        return RequestOutput(
            request_id=req.request_id,
            prompt_token_ids=req.prompt_ids,
            outputs=outs,
            finished=all(s.finish_reason is not None for s in req.seqs),
            num_computed_prompt_tokens=min(len(req.prompt_ids), max(s.num_computed_tokens for s in req.seqs)),
            num_preemptions=sum(s.num_preemptions for s in req.seqs),
        )


def _stable_prefix(text: str, stops: list[str]) -> str:
    """Text safe to stream: no trailing partial UTF-8 char, and no tail that could still become a stop string."""
    text = text.rstrip("\ufffd")
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                text = text[:-k]
                break
    return text
