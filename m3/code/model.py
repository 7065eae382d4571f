"""The one seam between the agent cluster and a model: `ChatModel.complete(messages) -> Reply`.

`EndpointModel` speaks the OpenAI wire format (`POST {base_url}/chat/completions`) over httpx, so any
compatible server works, m3's own included; `ScriptedModel` replays replies queued by a test. Kept thin on
purpose so it can later be swapped for `m3.client` without touching the rest of `m3.code`.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass
class Reply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class ModelError(RuntimeError):
    """The endpoint could not produce a reply (after retries)."""


class ChatModel(Protocol):
    name: str

    def complete(self, messages: list[Message], **kw) -> Reply: ...


@dataclass
class ModelSpec:
    """What a worker (thread or Ray task) needs to build its own `EndpointModel`; plain data, picklable."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str | None = None
    model: str = "default"
    timeout_s: float = 120.0
    max_retries: int = 3

    def build(self) -> EndpointModel:
        return EndpointModel(self.base_url, self.api_key, self.model, self.timeout_s, self.max_retries)


class EndpointModel:
    """Chat completions over HTTP (OpenAI wire format). Retries connection errors, 429 and 5xx with backoff."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        model: str = "default",
        timeout_s: float = 120.0,
        max_retries: int = 3,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = model
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers, transport=transport)

    def complete(self, messages: list[Message], **kw) -> Reply:
        body = {"model": self.name, "messages": messages, **kw}
        last_error = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
            try:
                resp = self._http.post(f"{self.base_url}/chat/completions", json=body)
            except httpx.HTTPError as e:
                last_error = f"{type(e).__name__}: {e}"
                continue
            if resp.status_code == 429 or resp.status_code >= 500:
                last_error = f"HTTP {resp.status_code}: {resp.text[:300]}"
                continue
            if resp.status_code != 200:
                # NOTE: 4xx other than 429 (bad key, bad request) will not get better by retrying.
                raise ModelError(f"{self.base_url}/chat/completions -> HTTP {resp.status_code}: {resp.text[:500]}")
            data = resp.json()
            usage = data.get("usage") or {}
            text = data["choices"][0]["message"].get("content") or ""
            return Reply(text, int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)))
        raise ModelError(f"{self.base_url}/chat/completions failed after {self.max_retries + 1} tries: {last_error}")


class ScriptedModel:
    """Replays queued replies in order (thread-safe), or answers through `respond(messages)` when given.

    Token counts are a deterministic estimate (whitespace words), so budget tests are exact.
    """

    def __init__(self, replies: list[str] | None = None, respond: Callable[[list[Message]], str] | None = None):
        self.name = "scripted"
        self._queue = collections.deque(replies or [])
        self._respond = respond
        self._lock = threading.Lock()
        self.calls: list[list[Message]] = []

    def __getstate__(self) -> dict:  # picklable for Ray workers (each gets its own copy of the script)
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def push(self, *replies: str) -> None:
        with self._lock:
            self._queue.extend(replies)

    def complete(self, messages: list[Message], **kw) -> Reply:
        with self._lock:
            self.calls.append([dict(m) for m in messages])
            text = self._queue.popleft() if self._respond is None and self._queue else None
        if self._respond is not None:
            text = self._respond(messages)  # NOTE: outside the lock, so parallel workers overlap in time
        elif text is None:
            raise ModelError("ScriptedModel: no reply queued")
        prompt_tokens = sum(len(m["content"].split()) for m in messages)
        return Reply(text, prompt_tokens, len(text.split()))
