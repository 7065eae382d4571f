"""What M3 and AsyncM3 share: configuration, the retry policy, error mapping and the resources (chat.completions,
completions, embeddings, code, models, analyze); SSE decoding and stream assembly are in _streaming.py.

Each resource method is written once, as a *flow*: a generator that yields `Call`s and receives their results.
The sync client drives flows with blocking I/O, the async client with awaits; nothing else differs, so the two
cannot drift apart (a parity test drives both with one script).
"""

import email.utils
import json
import os
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from m3.client.errors import ContextTooLongError, M3Error, error_for
from m3.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    CodeGeneration,
    CodeReview,
    Completion,
    EmbeddingResponse,
    ModelList,
    TokenizeResponse,
    Usage,
)

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


@dataclass
class Progress:
    """Reported to `on_progress` callbacks: prefill of a long prompt, then generation."""

    phase: str  # "count" (analyze, before sending) | "prefill" | "generate"
    done: int  # prompt tokens counted or processed, or completion tokens received
    total: int | None  # the context limit, the prompt length, or max_tokens when known


@dataclass
class Call:
    method: str
    path: str
    body: dict | None = None
    cast: type | None = None  # pydantic model of the response (or of each chunk when streaming)
    stream: bool = False
    assemble: bool = False  # stream under the hood (for progress), return the assembled non-streaming result
    on_progress: Callable[[Progress], None] | None = None
    max_tokens: int | None = None  # for generate-phase progress totals


@dataclass
class AnalysisResult:
    text: str
    prompt_tokens: int
    max_model_len: int
    usage: Usage | None = None
    finish_reason: str | None = None
    files: list[str] = field(default_factory=list)  # packed files, when analyze() was given a path
    skipped: list[tuple[str, str]] = field(default_factory=list)


Flow = Generator[Call, Any, Any]


class BaseClient:
    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 2,
        model: str = "default",
    ):
        self.api_key = api_key or os.environ.get("M3_API_KEY")
        self.base_url = (base_url or os.environ.get("M3_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.max_retries = max_retries
        self.model = model
        self.chat = _Chat(self)
        self.completions = Completions(self)
        self.embeddings = Embeddings(self)
        self.code = Code(self)
        self.models = Models(self)

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json", "user-agent": "m3-client/0.1"}
        if self.api_key:
            headers["authorization"] = f"Bearer {self.api_key}"
        return headers

    def _url(self, path: str) -> str:
        return self.base_url + path

    def analyze(
        self,
        task: str,
        context: str | None = None,
        path: str | None = None,
        *,
        model: str | None = None,
        max_tokens: int = 1024,
        temperature: float = 0.2,
        stream: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        **extra,
    ):
        """Long-context analysis of `context` (text) or `path` (a file or repository, packed with .gitignore
        respected). Counts the prompt first and raises ContextTooLongError naming the overflow. Returns an
        AnalysisResult, or a stream of chat chunks with stream=True."""
        return self._run(
            self._analyze_flow(task, context, path, model, max_tokens, temperature, stream, on_progress, extra)
        )

    def _analyze_flow(self, task, context, path, model, max_tokens, temperature, stream, on_progress, extra) -> Flow:
        from m3.analyze import analysis_messages, pack_path

        if (context is None) == (path is None):
            raise ValueError("give exactly one of context or path")
        packed = pack_path(path) if path is not None else None
        messages = analysis_messages(packed.text if packed else context, task)
        model = model or self.model
        count = yield Call("POST", "/tokenize", {"model": model, "messages": messages}, TokenizeResponse)
        if on_progress is not None:
            on_progress(Progress("count", count.count, count.max_model_len))
        total = count.count + max_tokens
        if total > count.max_model_len:
            raise ContextTooLongError(
                f"the input is {count.count} tokens; with max_tokens={max_tokens} that is {total}, "
                f"{total - count.max_model_len} tokens over the model's context limit of {count.max_model_len}",
                count.count,
                count.max_model_len,
            )
        body = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature, **extra}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            result = yield Call(
                "POST",
                "/chat/completions",
                body,
                ChatCompletionChunk,
                stream=True,
                on_progress=on_progress,
                max_tokens=max_tokens,
            )
            return result
        result = yield Call(
            "POST",
            "/chat/completions",
            body,
            ChatCompletion,
            assemble=True,
            on_progress=on_progress,
            max_tokens=max_tokens,
        )
        choice = result.choices[0]
        return AnalysisResult(
            choice.message.content or "",
            count.count,
            count.max_model_len,
            result.usage,
            choice.finish_reason,
            packed.files if packed else [],
            packed.skipped if packed else [],
        )

    def _run(self, flow: Flow):
        raise NotImplementedError  # M3 drives flows with blocking I/O, AsyncM3 with awaits

    # -- shared policy --
    def _retry_delay(self, attempt: int, status: int | None, headers: dict | None, body: dict | None) -> float | None:
        """Seconds to wait before retry `attempt` (1-based), or None to give up. status None = connection error."""
        if attempt > self.max_retries:
            return None
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        if status is not None:
            if status not in RETRY_STATUSES or headers.get("x-should-retry") == "false":
                return None
            error = (body or {}).get("error") if isinstance(body, dict) else None
            if isinstance(error, dict) and error.get("code") == "insufficient_quota":
                return None
            after = _retry_after(headers)
            if after is not None:
                return min(after, MAX_RETRY_AFTER_S)
        return min(0.5 * 2 ** (attempt - 1), 8.0) * (0.75 + random.random() / 2)


def _retry_after(headers: dict) -> float | None:
    if "retry-after-ms" in headers:
        try:
            return float(headers["retry-after-ms"]) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parsed = email.utils.parsedate_to_datetime(value) if value else None
    return max(0.0, parsed.timestamp() - time.time()) if parsed is not None else None


def parse_error(status: int, content: bytes, headers) -> M3Error:
    try:
        body = json.loads(content)
    except ValueError:
        body = {"error": {"message": content[:500].decode("utf-8", "replace")}}
    return error_for(status, body, dict(headers))


def _body(**kwargs) -> dict:
    return {k: v for k, v in kwargs.items() if v is not None}


# -- resources: each method returns whatever the client's _run makes of its flow --
class _Resource:
    def __init__(self, client: BaseClient):
        self._client = client

    def _one(self, call: Call):
        def flow():
            result = yield call
            return result

        return self._client._run(flow())


class ChatCompletions(_Resource):
    def create(
        self,
        *,
        messages: list[dict],
        model: str | None = None,
        stream: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        **params,
    ):
        """POST /chat/completions. Returns ChatCompletion, or a stream of ChatCompletionChunk with stream=True.
        With on_progress and no stream, streams under the hood to report progress and returns the ChatCompletion."""
        body = _body(model=model or self._client.model, messages=messages, **params)
        max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
        if stream:
            body["stream"] = True
            return self._one(
                Call(
                    "POST",
                    "/chat/completions",
                    body,
                    ChatCompletionChunk,
                    stream=True,
                    on_progress=on_progress,
                    max_tokens=max_tokens,
                )
            )
        if on_progress is not None:
            return self._one(
                Call(
                    "POST",
                    "/chat/completions",
                    body,
                    ChatCompletion,
                    assemble=True,
                    on_progress=on_progress,
                    max_tokens=max_tokens,
                )
            )
        return self._one(Call("POST", "/chat/completions", body, ChatCompletion))


class _Chat:
    def __init__(self, client: BaseClient):
        self.completions = ChatCompletions(client)


class Completions(_Resource):
    def create(
        self,
        *,
        prompt,
        model: str | None = None,
        stream: bool = False,
        on_progress: Callable[[Progress], None] | None = None,
        **params,
    ):
        """POST /completions. Returns Completion, or a stream of Completion chunks with stream=True."""
        body = _body(model=model or self._client.model, prompt=prompt, **params)
        if stream:
            body["stream"] = True
            return self._one(
                Call(
                    "POST",
                    "/completions",
                    body,
                    Completion,
                    stream=True,
                    on_progress=on_progress,
                    max_tokens=params.get("max_tokens"),
                )
            )
        if on_progress is not None:
            return self._one(
                Call(
                    "POST",
                    "/completions",
                    body,
                    Completion,
                    assemble=True,
                    on_progress=on_progress,
                    max_tokens=params.get("max_tokens"),
                )
            )
        return self._one(Call("POST", "/completions", body, Completion))


class Embeddings(_Resource):
    def create(self, *, input: str | list[str], model: str = "default", **params):
        """POST /embeddings: unit-norm vectors, one per input string."""
        return self._one(Call("POST", "/embeddings", _body(input=input, model=model, **params), EmbeddingResponse))


class Code(_Resource):
    def generate(self, *, prompt: str, language: str = "python", model: str | None = None, **params):
        """POST /code/generate: files (path, language, content) and an explanation."""
        body = _body(prompt=prompt, language=language, model=model or self._client.model, **params)
        return self._one(Call("POST", "/code/generate", body, CodeGeneration))

    def review(
        self,
        *,
        code: str | None = None,
        diff: str | None = None,
        standards: list[str] | None = None,
        model: str | None = None,
        **params,
    ):
        """POST /code/review: issues (severity, file, line, message, suggestion), quality_score and summary."""
        body = _body(code=code, diff=diff, standards=standards, model=model or self._client.model, **params)
        return self._one(Call("POST", "/code/review", body, CodeReview))


class Models(_Resource):
    def list(self):
        return self._one(Call("GET", "/models", None, ModelList))
