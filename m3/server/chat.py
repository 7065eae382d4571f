"""POST /v1/chat/completions and /v1/completions: OpenAI requests -> engine prompts and SamplingParams (inputs.py)
-> one Run on the engine -> OpenAI responses, or SSE chunks (streaming.py)."""

import json

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from m3.protocol import ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest
from m3.server.errors import APIError
from m3.server.generation import Run
from m3.server.inputs import (
    ERRORS,
    SSE_RESPONSE,
    chat_prompt_ids,
    check_model,
    sampling_params,
    server_state,
    until_disconnect,
)
from m3.server.jsonrepair import JSONRepairError, repair_json
from m3.server.streaming import chat_stream, completion_stream, usage_dict

router = APIRouter()

JSON_OBJECT_INSTRUCTION = "Respond with a single valid JSON object and nothing else."


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
