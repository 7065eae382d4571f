"""Server-sent events exactly as OpenAI sends them: `data: {chunk}` lines, a final `data: [DONE]`, and with
`stream_options.include_usage` a last chunk with empty `choices` and the usage (every other chunk has usage null).

Between chunks, SSE comment lines (ignored by every SSE client, OpenAI's included) keep the connection alive:
`: keep-alive` while queued or computing, and `: prefill DONE/TOTAL` as a long prompt is processed.
"""

import json
import time
from collections.abc import AsyncIterator

from m3.server.errors import APIError
from m3.server.generation import Run


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"


def progress_comment(done: int, total: int) -> bytes:
    return f": prefill {done}/{total}\n\n".encode()


def usage_dict(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_event(error: APIError) -> bytes:
    return sse({"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}})


async def chat_stream(run: Run, model: str, include_usage: bool, logprobs_fn) -> AsyncIterator[bytes]:
    """logprobs_fn(completion_output, new_token_count) -> the chunk's logprobs or None."""
    created = int(time.time())
    n = run.params.n

    def chunk(choices: list[dict], usage=None) -> bytes:
        body = {
            "id": run.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return sse(body)

    for i in range(n):
        yield chunk(
            [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]
        )
    async for event in run.events():
        if event.kind == "keepalive":
            yield KEEPALIVE
        elif event.kind == "progress":
            yield progress_comment(event.done, event.total)
        elif event.kind == "error":
            yield error_event(event.error)
            break
        else:
            for c in event.output.outputs:
                logprobs = logprobs_fn(c, len(c.delta_token_ids))
                if c.delta_text or (logprobs is not None and c.delta_token_ids):
                    delta = {"content": c.delta_text}
                    yield chunk([{"index": c.index, "delta": delta, "logprobs": logprobs, "finish_reason": None}])
                if c.finish_reason is not None:
                    yield chunk([{"index": c.index, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}])
    # NOTE: run.events() has settled the ledger by now, so a client that saw [DONE] is always on the books.
    if include_usage and run.error is None:
        yield chunk([], usage_dict(run.num_prompt_tokens, run.num_completion_tokens))
    yield DONE


async def completion_stream(
    run: Run, model: str, include_usage: bool, logprobs_fn, echo_texts: list[str] | None
) -> AsyncIterator[bytes]:
    created = int(time.time())
    n = run.params.n

    def chunk(choices: list[dict], usage=None) -> bytes:
        body = {
            "id": run.id,
            "object": "text_completion",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if include_usage:
            body["usage"] = usage
        return sse(body)

    if echo_texts is not None:
        for p, text in enumerate(echo_texts):
            for j in range(n):
                yield chunk([{"index": p * n + j, "text": text, "logprobs": None, "finish_reason": None}])
    async for event in run.events():
        if event.kind == "keepalive":
            yield KEEPALIVE
        elif event.kind == "progress":
            yield progress_comment(event.done, event.total)
        elif event.kind == "error":
            yield error_event(event.error)
            break
        else:
            for c in event.output.outputs:
                index = event.index * n + c.index
                logprobs = logprobs_fn(c, len(c.delta_token_ids))
                if c.delta_text or c.finish_reason is not None or (logprobs is not None and c.delta_token_ids):
                    yield chunk(
                        [{"index": index, "text": c.delta_text, "logprobs": logprobs, "finish_reason": c.finish_reason}]
                    )
    if include_usage and run.error is None:
        yield chunk([], usage_dict(run.num_prompt_tokens, run.num_completion_tokens))
    yield DONE
