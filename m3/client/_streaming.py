"""SSE decoding, per-stream bookkeeping (chunks, usage, progress callbacks, mid-stream errors) and the assembly of
a non-streaming result from chunks; shared by Stream (sync) and AsyncStream."""

import json

from m3.client._base import Progress
from m3.client.errors import error_for
from m3.protocol import ChatCompletion, ChatCompletionChunk, Completion, Usage


class SSEDecoder:
    """Turns SSE lines into ("data", text) and ("comment", text) events; `[DONE]` ends the stream."""

    def __init__(self):
        self._data: list[str] = []

    def line(self, line: str) -> tuple[str, str] | None:
        if line == "":
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return ("data", data)
        if line.startswith(":"):
            return ("comment", line[1:].strip())
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None


class StreamState:
    """Per-stream bookkeeping shared by Stream and AsyncStream: turns events into chunks and progress calls."""

    def __init__(self, cast: type, on_progress, max_tokens: int | None):
        self.cast = cast
        self.on_progress = on_progress
        self.max_tokens = max_tokens
        self.decoder = SSEDecoder()
        self.num_chunks = 0
        self.usage: Usage | None = None
        self.done = False

    def feed(self, line: str):
        """The chunk this line completes, or None."""
        event = self.decoder.line(line)
        if event is None:
            return None
        kind, text = event
        if kind == "comment":
            if text.startswith("prefill ") and self.on_progress is not None:
                done, _, total = text[len("prefill ") :].partition("/")
                if done.isdigit() and total.isdigit():
                    self.on_progress(Progress("prefill", int(done), int(total)))
            return None
        if text.strip() == "[DONE]":
            self.done = True
            return None
        data = json.loads(text)
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            kind = data["error"].get("type")
            raise error_for({"invalid_request_error": 400, "service_unavailable": 503}.get(kind, 500), data)
        chunk = self.cast.model_validate(data)
        if chunk.usage is not None:
            self.usage = chunk.usage
        if any((getattr(c, "delta", None) and c.delta.content) or getattr(c, "text", None) for c in chunk.choices):
            self.num_chunks += 1
            if self.on_progress is not None:
                self.on_progress(Progress("generate", self.num_chunks, self.max_tokens))
        return chunk


class Assembler:
    """Builds the non-streaming result from chunks (chat or text completion)."""

    def __init__(self):
        self.id = ""
        self.model = ""
        self.created = 0
        self.texts: dict[int, list[str]] = {}
        self.finish: dict[int, str | None] = {}
        self.is_chat = True

    def add(self, chunk):
        self.id, self.model, self.created = chunk.id, chunk.model, chunk.created
        self.is_chat = isinstance(chunk, ChatCompletionChunk)
        for c in chunk.choices:
            text = (c.delta.content if self.is_chat else c.text) or ""
            self.texts.setdefault(c.index, []).append(text)
            if c.finish_reason is not None:
                self.finish[c.index] = c.finish_reason

    def result(self, usage: Usage | None):
        indices = sorted(self.texts)
        if self.is_chat:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": "".join(self.texts[i])},
                    "finish_reason": self.finish.get(i),
                }
                for i in indices
            ]
            return ChatCompletion(id=self.id, model=self.model, created=self.created, choices=choices, usage=usage)
        choices = [{"index": i, "text": "".join(self.texts[i]), "finish_reason": self.finish.get(i)} for i in indices]
        return Completion(id=self.id, model=self.model, created=self.created, choices=choices, usage=usage)
