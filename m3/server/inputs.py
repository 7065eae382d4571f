"""From an OpenAI request to engine inputs: the engine is ready, the model name is ours, the prompt fits the
context, SamplingParams are valid, max_tokens defaults within context and quota; and a request's generation stops
when its client goes away. Shared by the chat, completions and code-task routes.

Everything the engine would reject is checked here first, so a streaming request gets a proper 4xx status
instead of an error in the middle of a 200 stream.
"""

import asyncio

import anyio.to_thread
from fastapi import Request

from m3.protocol import ErrorResponse
from m3.sampling_params import SamplingParams
from m3.server.errors import APIError, bad_value

ERRORS = {
    400: {"model": ErrorResponse, "description": "invalid request (context_length_exceeded, invalid_value ...)"},
    401: {"model": ErrorResponse, "description": "missing or incorrect API key"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    429: {"model": ErrorResponse, "description": "rate limit reached, or daily token quota spent (insufficient_quota)"},
    503: {"model": ErrorResponse, "description": "the engine is loading or has failed"},
}
SSE_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when stream=true"}}


def server_state(request: Request):
    """The server's state once the engine is ready; 503 while it loads or after it failed."""
    state = request.app.state.m3
    if state.engine is None or not state.engine.is_healthy:
        detail = "is still loading" if state.load_error is None and state.engine is None else "has failed"
        raise APIError(503, f"the model {detail}; see GET /health", code="engine_unavailable")
    return state


def check_model(state, model: str) -> None:
    if model not in (state.model_name, "default"):
        raise APIError(
            404,
            f"The model '{model}' does not exist; this server serves '{state.model_name}' (GET /v1/models).",
            param="model",
            code="model_not_found",
        )


async def sampling_params(
    state, request: Request, body, prompts: list[list[int]], max_tokens: int | None, logprobs: int | None, param: str
) -> SamplingParams:
    longest = max(len(p) for p in prompts)
    limit = state.engine.max_model_len
    what = "messages" if param == "messages" else "prompt"
    if max_tokens is None:
        max_tokens = min(state.default_max_tokens, limit - longest)
        max_tokens = min(max_tokens, await _quota_budget(state, request, prompts, body.n))
        if max_tokens < 1:
            max_tokens = 1  # the context check below reports it (or the quota check, when that is what ran out)
    total = longest + max_tokens
    if total > limit:
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested {total} tokens "
            f"({longest} in the {what}, {max_tokens} in the completion). Please reduce the length of the {what} "
            f"or completion.",
            param=param,
            code="context_length_exceeded",
        )
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise APIError(400, f"stop takes at most 4 sequences; got {len(stop)}", param="stop")
    temperature = body.temperature
    if temperature is not None and 0 < temperature < 1e-3:
        temperature = 0.0  # NOTE: logits / 1e-300 overflow to inf; this close to 0 sampling is greedy anyway
    values = dict(
        temperature=temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        seed=body.seed,
    )
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            stop=stop,
            n=body.n,
            logprobs=logprobs,
            ignore_eos=body.ignore_eos,
            **{k: v for k, v in values.items() if v is not None},
        )
    except ValueError as exc:
        raise bad_value(exc) from exc


async def _quota_budget(state, request: Request, prompts: list[list[int]], n: int) -> int:
    """The most tokens per completion today's remaining quota allows (for requests that leave max_tokens unset)."""
    plan = request.state.plan
    if plan.tokens_per_day is None:
        return 1 << 62
    used = await anyio.to_thread.run_sync(state.ledger.used_today, request.state.api_key)
    remaining = plan.tokens_per_day - used
    return (remaining - sum(len(p) for p in prompts)) // (n * len(prompts))


async def until_disconnect(request: Request, coro):
    """Await coro, cancelling it if the client goes away first (a non-streaming request then stops generating)."""
    task = asyncio.ensure_future(coro)

    async def watch():
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.create_task(watch())
    try:
        return await task
    finally:
        watcher.cancel()


def chat_prompt_ids(state, messages: list[dict], prefill: str = "") -> list[int]:
    """The prompt for messages; `prefill` starts the assistant's answer (the model continues from it)."""
    try:
        text = state.engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True) + prefill
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages") from exc
    except Exception as exc:  # noqa: BLE001 - a template that rejects the conversation (e.g. role order)
        raise APIError(400, f"the model's chat template rejected the messages: {exc}", param="messages") from exc
    return state.engine.tokenizer.encode(text, add_special_tokens=False)
