"""POST /v1/chat/completions and /v1/completions: OpenAI requests -> engine prompts and SamplingParams -> responses.

Everything the engine would reject is checked here first (model name, context length, token ids, quota), so a
streaming request gets a proper 4xx status instead of an error in the middle of a 200 stream.
"""

import asyncio
import json

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from m3.protocol import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, ErrorResponse
from m3.sampling_params import SamplingParams
from m3.server.errors import APIError, bad_value
from m3.server.generation import Run
from m3.server.jsonrepair import JSONRepairError, repair_json
from m3.server.streaming import chat_stream, completion_stream, usage_dict

router = APIRouter()

ERRORS = {
    400: {"model": ErrorResponse, "description": "invalid request (context_length_exceeded, invalid_value ...)"},
    401: {"model": ErrorResponse, "description": "missing or incorrect API key"},
    404: {"model": ErrorResponse, "description": "unknown model"},
    413: {"model": ErrorResponse, "description": "request body too large"},
    429: {"model": ErrorResponse, "description": "rate limit reached, or daily token quota spent (insufficient_quota)"},
    503: {"model": ErrorResponse, "description": "the engine is loading or has failed"},
}
SSE_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when stream=true"}}
JSON_OBJECT_INSTRUCTION = "Respond with a single valid JSON object and nothing else."


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


def stream_response(body_iter) -> StreamingResponse:
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return StreamingResponse(body_iter, media_type="text/event-stream", headers=headers)


# -- chat --
def _chat_messages(body: ChatCompletionRequest) -> list[dict]:
    messages = []
    for i, m in enumerate(body.messages):
        content = m.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.type != "text" or part.text is None:
                    raise APIError(
                        400,
                        f"messages[{i}].content: only text parts are supported; got {part.type!r}",
                        param=f"messages.{i}.content",
                        code="unsupported_content",
                    )
                texts.append(part.text)
            content = "".join(texts)
        role = "system" if m.role == "developer" else m.role
        messages.append({"role": role, "content": content or ""})
    if body.response_format is not None and body.response_format.type == "json_object":
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + JSON_OBJECT_INSTRUCTION}
        else:
            messages.insert(0, {"role": "system", "content": JSON_OBJECT_INSTRUCTION})
    return messages


def chat_prompt_ids(state, messages: list[dict], prefill: str = "") -> list[int]:
    """The prompt for messages; `prefill` starts the assistant's answer (the model continues from it)."""
    try:
        text = state.engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True) + prefill
    except ValueError as exc:
        raise APIError(400, str(exc), param="messages") from exc
    except Exception as exc:  # noqa: BLE001 - a template that rejects the conversation (e.g. role order)
        raise APIError(400, f"the model's chat template rejected the messages: {exc}", param="messages") from exc
    return state.engine.tokenizer.encode(text, add_special_tokens=False)


def _chat_logprobs_fn(tokenizer, enabled: bool):
    def fn(c, count: int):
        if not enabled or not c.logprobs or not count:
            return None
        return {"content": [_token_logprob(tokenizer, e) for e in c.logprobs[-count:]]}

    return fn


def _token_logprob(tokenizer, entry: dict) -> dict:
    def piece(token_id: int, logprob: float) -> dict:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {**piece(entry["token_id"], entry["logprob"]), "top_logprobs": [piece(t, lp) for t, lp in entry["top"]]}


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={**SSE_RESPONSE, **ERRORS},
    summary="Chat completion (OpenAI-compatible; stream=true for SSE chunks)",
)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    state = server_state(request)
    check_model(state, body.model)
    if body.tools:
        raise APIError(400, "tools (function calling) are not supported by this server", param="tools")
    prompt_ids = chat_prompt_ids(state, _chat_messages(body))
    top = (body.top_logprobs or 0) if body.logprobs else None
    max_tokens = body.max_completion_tokens or body.max_tokens
    params = await sampling_params(state, request, body, [prompt_ids], max_tokens, top, "messages")
    run = Run(state, request, "chat.completions", [prompt_ids], params, "chatcmpl")
    await run.reserve()
    logprobs_fn = _chat_logprobs_fn(state.engine.tokenizer, body.logprobs)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_response(chat_stream(run, state.model_name, include_usage, logprobs_fn))
    (final,) = await until_disconnect(request, run.collect())
    is_json = body.response_format is not None and body.response_format.type == "json_object"
    choices = []
    for c in final.outputs:
        text = c.text
        if is_json:
            try:
                text = json.dumps(repair_json(text), ensure_ascii=False)
            except JSONRepairError:
                pass  # NOTE: returned as generated, as OpenAI does when a JSON-mode answer is cut off
        logprobs = logprobs_fn(c, len(c.token_ids))
        choices.append(
            {
                "index": c.index,
                "message": {"role": "assistant", "content": text},
                "logprobs": logprobs,
                "finish_reason": c.finish_reason,
            }
        )
    return ChatCompletion(
        id=run.id,
        model=state.model_name,
        choices=choices,
        usage=usage_dict(run.num_prompt_tokens, run.num_completion_tokens),
    )


# -- completions --
def _completion_prompts(state, prompt) -> list[list[int]]:
    tokenizer = state.engine.tokenizer
    if isinstance(prompt, str):
        prompts = [tokenizer.encode(prompt)]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]
    elif prompt and all(isinstance(p, str) for p in prompt):
        prompts = [tokenizer.encode(p) for p in prompt]
    else:
        prompts = [list(p) for p in prompt]
    if not prompts or any(not p for p in prompts):
        raise APIError(400, "prompt is empty: give at least one token", param="prompt")
    if len(prompts) > state.max_batch_prompts:
        raise APIError(
            400, f"prompt takes at most {state.max_batch_prompts} prompts; got {len(prompts)}", param="prompt"
        )
    vocab = tokenizer.vocab_size
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise APIError(400, f"prompt token ids must be integers in [0, {vocab})", param="prompt")
    return prompts


def _completion_logprobs_fn(tokenizer, enabled: bool):
    def fn(c, count: int):
        if not enabled or not c.logprobs or not count:
            return None
        entries = c.logprobs[-count:]
        tokens = [tokenizer.decode([e["token_id"]]) for e in entries]
        offset = 0 if count == len(c.logprobs) else len(c.text) - len(c.delta_text)  # start of this chunk's text
        offsets = []
        for t in tokens:
            offsets.append(offset)
            offset += len(t)
        return {
            "tokens": tokens,
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{tokenizer.decode([t]): lp for t, lp in e["top"]} for e in entries],
            "text_offset": offsets,
        }

    return fn


@router.post(
    "/v1/completions",
    response_model=Completion,
    responses={**SSE_RESPONSE, **ERRORS},
    summary="Text completion (OpenAI-compatible; stream=true for SSE chunks)",
)
async def completions(body: CompletionRequest, request: Request):
    state = server_state(request)
    check_model(state, body.model)
    if body.suffix:
        raise APIError(400, "suffix is not supported by this server", param="suffix")
    if body.best_of is not None and body.best_of != body.n:
        raise APIError(400, "best_of is not supported (leave it unset or equal to n)", param="best_of")
    if body.echo and body.logprobs is not None:
        raise APIError(400, "echo with logprobs is not supported (prompt logprobs are not computed)", param="echo")
    prompts = _completion_prompts(state, body.prompt)
    params = await sampling_params(state, request, body, prompts, body.max_tokens, body.logprobs, "prompt")
    run = Run(state, request, "completions", prompts, params, "cmpl")
    await run.reserve()
    tokenizer = state.engine.tokenizer
    echo_texts = [tokenizer.decode(p) for p in prompts] if body.echo else None
    logprobs_fn = _completion_logprobs_fn(tokenizer, body.logprobs is not None)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_response(completion_stream(run, state.model_name, include_usage, logprobs_fn, echo_texts))
    finals = await until_disconnect(request, run.collect())
    choices = []
    for p, final in enumerate(finals):
        for c in final.outputs:
            text = (echo_texts[p] if echo_texts else "") + c.text
            choices.append(
                {
                    "index": p * params.n + c.index,
                    "text": text,
                    "logprobs": logprobs_fn(c, len(c.token_ids)),
                    "finish_reason": c.finish_reason,
                }
            )
    return Completion(
        id=run.id,
        model=state.model_name,
        choices=choices,
        usage=usage_dict(run.num_prompt_tokens, run.num_completion_tokens),
    )
