"""The SDK: no torch on import, sync/async parity driven by one script against a live tiny server, retries against a
scripted local server (Retry-After honoured, a spent quota never retried), progress callbacks."""

import asyncio
import inspect
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from m3.client import (
    M3,
    APIConnectionError,
    APITimeoutError,
    AsyncM3,
    AuthenticationError,
    BadRequestError,
    ContextLengthExceededError,
    ContextTooLongError,
    InsufficientQuotaError,
    NotFoundError,
    Progress,
    RateLimitError,
)
from m3.client._streaming import StreamState
from m3.protocol import ChatCompletion, ChatCompletionChunk, CodeGeneration, Completion, EmbeddingResponse
from tests.server.live import LiveServer, free_port

REPO_ROOT = str(Path(__file__).resolve().parents[2])
MESSAGES = [{"role": "user", "content": "Tell me a story"}]


def test_client_and_protocol_do_not_import_torch():
    code = (
        "import sys; import m3.client, m3.protocol, m3.analyze; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'm3.engine', 'm3.server'))]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


async def call(value):
    """The one place sync and async differ for a script: await what the async client returns."""
    return await value if inspect.isawaitable(value) else value


async def collect(stream) -> list:
    if hasattr(stream, "__aiter__"):
        return [chunk async for chunk in stream]
    return list(stream)


async def raises(exc_type, value_fn) -> str:
    try:
        await call(value_fn())
    except exc_type as exc:
        return type(exc).__name__
    raise AssertionError(f"{exc_type.__name__} not raised")


async def script(client, bad_client) -> dict:
    """Everything the SDK does, written once; the test runs it with M3 and AsyncM3 and compares."""
    out = {}
    models = await call(client.models.list())
    out["models"] = [(m.id, m.max_model_len) for m in models.data]
    chat = await call(client.chat.completions.create(messages=MESSAGES, max_tokens=6, temperature=0, ignore_eos=True))
    assert isinstance(chat, ChatCompletion)
    out["chat"] = (chat.choices[0].message.content, chat.usage.completion_tokens)
    stream = await call(
        client.chat.completions.create(
            messages=MESSAGES,
            max_tokens=6,
            temperature=0,
            ignore_eos=True,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    chunks = await collect(stream)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    out["stream"] = ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices), stream.usage.total_tokens)
    progress: list[Progress] = []
    assembled = await call(
        client.chat.completions.create(
            messages=MESSAGES, max_tokens=6, temperature=0, ignore_eos=True, on_progress=progress.append
        )
    )
    out["assembled"] = (assembled.choices[0].message.content, assembled.usage.completion_tokens)
    out["progress"] = [(p.phase, p.total) for p in progress][-1:]
    completion = await call(client.completions.create(prompt="Once upon a time", max_tokens=5, seed=11))
    assert isinstance(completion, Completion)
    out["completion"] = completion.choices[0].text
    text_stream = await call(client.completions.create(prompt="Once upon a time", max_tokens=5, seed=11, stream=True))
    out["completion_stream"] = "".join(c.choices[0].text for c in await collect(text_stream) if c.choices)
    batch = await call(
        client.batch_complete(
            [{"prompt": f"Item {i}:", "max_tokens": 3, "temperature": 0} for i in range(5)], max_concurrency=2
        )
    )
    out["batch"] = [b.choices[0].text for b in batch]
    generated = await call(client.code.generate(prompt="add two numbers", max_tokens=8, temperature=0))
    assert isinstance(generated, CodeGeneration)
    out["generate"] = [f.path for f in generated.files]
    result = await call(client.analyze("What is x?", context="x = 1\n", max_tokens=4, temperature=0))
    out["analyze"] = (result.text, result.prompt_tokens, result.max_model_len)
    out["errors"] = [
        await raises(NotFoundError, lambda: client.chat.completions.create(model="gpt-4", messages=MESSAGES)),
        await raises(
            ContextLengthExceededError, lambda: client.chat.completions.create(messages=MESSAGES, max_tokens=5000)
        ),
        await raises(BadRequestError, lambda: client.completions.create(prompt="x", temperature=7)),
        await raises(ContextTooLongError, lambda: client.analyze("summarize", context="word " * 2000)),
        await raises(AuthenticationError, lambda: bad_client.models.list()),
        await raises(NotFoundError, lambda: client.embeddings.create(input="hi")),  # no embedder on this server
    ]
    return out


def test_sync_async_parity(live):
    sync_client = M3(api_key=live.keys["ultra"], base_url=live.api)
    sync_bad = M3(api_key="m3-nope-nope", base_url=live.api, max_retries=0)
    sync_out = asyncio.run(script(sync_client, sync_bad))

    async def run_async():
        async with AsyncM3(api_key=live.keys["ultra"], base_url=live.api) as client:
            return await script(client, AsyncM3(api_key="m3-nope-nope", base_url=live.api, max_retries=0))

    async_out = asyncio.run(run_async())
    assert sync_out == async_out
    assert sync_out["chat"][0] == sync_out["stream"][0] == sync_out["assembled"][0]  # three paths, one answer
    assert sync_out["completion"] == sync_out["completion_stream"]
    assert sync_out["progress"] == [("generate", 6)] and sync_out["chat"][1] == 6
    assert sync_out["models"] == [("tiny", 512)] and sync_out["analyze"][2] == 512


def test_stream_state_reports_prefill_progress_and_errors():
    seen = []
    state = StreamState(ChatCompletionChunk, seen.append, max_tokens=10)
    for line in [": keep-alive", "", ": prefill 16/480", "", ": prefill 480/480", ""]:
        assert state.feed(line) is None
    chunk = (
        '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m",'
        '"choices":[{"index":0,"delta":{"content":"hi"}}]}'
    )
    assert state.feed("data: " + chunk) is None and state.feed("").choices[0].delta.content == "hi"
    assert seen == [Progress("prefill", 16, 480), Progress("prefill", 480, 480), Progress("generate", 1, 10)]
    state.feed('data: {"error": {"message": "engine died", "type": "service_unavailable", "code": "engine_failed"}}')
    with pytest.raises(Exception, match="engine died"):
        state.feed("")
    state.feed("data: [DONE]")
    state.feed("")
    assert state.done


# -- retries against a scripted server --
class Scripted:
    def __init__(self):
        self.attempts: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    async def chat(self, request: Request):
        body = await request.json()
        user = body.get("user", "ok")  # "sync:flaky": a run prefix, then the scenario
        scenario = user.split(":", 1)[-1]
        with self.lock:
            times = self.attempts.setdefault(user, [])
            times.append(time.monotonic())
            n = len(times)
        if scenario == "retry-after" and n == 1:
            return _error(429, "rate_limit_exceeded", {"retry-after": "1"})
        if scenario == "flaky" and n <= 2:
            return _error(503, "engine_unavailable")
        if scenario == "quota":
            return _error(429, "insufficient_quota", {"x-should-retry": "false", "retry-after": "0"})
        if scenario == "limited":
            return _error(429, "rate_limit_exceeded", {"retry-after-ms": "10"})
        if scenario == "bad":
            return _error(400, "invalid_value")
        if scenario == "slow":
            await asyncio.sleep(2)
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": f"ok after {n}"}, "finish_reason": "stop"}
                ],
            }
        )


def _error(status: int, code: str, headers: dict | None = None) -> JSONResponse:
    body = {
        "error": {
            "message": code,
            "type": "insufficient_quota" if code == "insufficient_quota" else "x",
            "param": None,
            "code": code,
        }
    }
    return JSONResponse(body, status, headers=headers)


@pytest.fixture(scope="module")
def scripted_server():
    scripted = Scripted()
    app = Starlette(routes=[Route("/v1/chat/completions", scripted.chat, methods=["POST"])])
    with LiveServer(app) as server:
        yield scripted, server.url + "/v1"


async def retry_script(client, scripted: Scripted, prefix: str) -> dict:
    out = {}

    async def ask(user):
        return await call(client.chat.completions.create(messages=MESSAGES, user=prefix + user))

    start = time.monotonic()
    out["retry-after"] = (await ask("retry-after")).choices[0].message.content
    times = scripted.attempts[prefix + "retry-after"]
    assert times[1] - times[0] >= 0.95, "Retry-After: 1 was not honoured"
    assert time.monotonic() - start < 5
    out["flaky"] = (await ask("flaky")).choices[0].message.content
    out["quota"] = await raises(
        InsufficientQuotaError, lambda: client.chat.completions.create(messages=MESSAGES, user=prefix + "quota")
    )
    out["limited"] = await raises(
        RateLimitError, lambda: client.chat.completions.create(messages=MESSAGES, user=prefix + "limited")
    )
    out["bad"] = await raises(
        BadRequestError, lambda: client.chat.completions.create(messages=MESSAGES, user=prefix + "bad")
    )
    out["attempts"] = {k[len(prefix) :]: len(v) for k, v in scripted.attempts.items() if k.startswith(prefix)}
    return out


def test_retries_sync_and_async(scripted_server):
    scripted, url = scripted_server
    sync_out = asyncio.run(retry_script(M3(api_key="k", base_url=url, max_retries=3), scripted, "sync:"))

    async def run_async():
        async with AsyncM3(api_key="k", base_url=url, max_retries=3) as client:
            return await retry_script(client, scripted, "async:")

    assert sync_out == asyncio.run(run_async())
    assert sync_out["retry-after"] == "ok after 2" and sync_out["flaky"] == "ok after 3"
    # a spent quota and a bad request are final; a rate limit is retried max_retries times
    assert sync_out["attempts"] == {"retry-after": 2, "flaky": 3, "quota": 1, "limited": 4, "bad": 1}


def test_connection_errors_and_timeouts(scripted_server):
    _, url = scripted_server
    dead = f"http://127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    with pytest.raises(APIConnectionError):
        M3(api_key="k", base_url=dead, max_retries=1).models.list()
    assert time.monotonic() - start < 5
    with pytest.raises(APITimeoutError):
        M3(api_key="k", base_url=url, timeout=0.3, max_retries=0).chat.completions.create(
            messages=MESSAGES, user="slow"
        )

    async def run_async():
        with pytest.raises(APIConnectionError):
            await AsyncM3(api_key="k", base_url=dead, max_retries=1).models.list()

    asyncio.run(run_async())


def test_typed_embeddings_result_shape():
    body = {
        "object": "list",
        "data": [{"index": 0, "object": "embedding", "embedding": [0.1, 0.2]}],
        "model": "m",
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    parsed = EmbeddingResponse.model_validate(body)
    assert parsed.data[0].embedding == [0.1, 0.2] and parsed.usage.prompt_tokens == 2
