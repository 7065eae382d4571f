"""M3: the blocking client (httpx.Client). Drives the shared flows of `_base` with blocking I/O."""

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx

from m3.client._base import BaseClient, Call, Flow, parse_error
from m3.client._streaming import Assembler, StreamState
from m3.client.errors import APIConnectionError, APITimeoutError


class Stream:
    """Iterate for typed chunks; `usage` is set once a usage chunk arrived. Closes the response at the end."""

    def __init__(self, response: httpx.Response, state: StreamState):
        self.response = response
        self._state = state

    @property
    def usage(self):
        return self._state.usage

    def __iter__(self) -> Iterator:
        try:
            for line in self.response.iter_lines():
                chunk = self._state.feed(line)
                if chunk is not None:
                    yield chunk
                if self._state.done:
                    break
        finally:
            self.response.close()

    def close(self):
        self.response.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class M3(BaseClient):
    """Blocking client: `M3(api_key=..., base_url="http://127.0.0.1:8000/v1")`; see `m3.client` for the API."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 2,
        model: str = "default",
        http_client: httpx.Client | None = None,
    ):
        super().__init__(api_key, base_url, timeout, max_retries, model)
        self._http = http_client or httpx.Client(timeout=httpx.Timeout(timeout, connect=10.0))

    def close(self):
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def batch_complete(self, tasks: list[dict], max_concurrency: int = 8, return_exceptions: bool = False) -> list:
        """Run completions.create(**task) for each task, at most max_concurrency at once; results in task order."""

        def one(task: dict):
            try:
                return self.completions.create(**task)
            except Exception as exc:
                if return_exceptions:
                    return exc
                raise

        with ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool:
            return list(pool.map(one, tasks))

    def _run(self, flow: Flow):
        try:
            call = next(flow)
            while True:
                call = flow.send(self._execute(call))
        except StopIteration as stop:
            return stop.value

    def _execute(self, call: Call):
        response = self._send(call)
        if not (call.stream or call.assemble):
            try:
                response.read()
                return call.cast.model_validate(response.json())
            finally:
                response.close()
        cast = call.cast
        if call.assemble:  # stream the chunk type of this endpoint
            from m3.protocol import ChatCompletion, ChatCompletionChunk

            cast = ChatCompletionChunk if call.cast is ChatCompletion else call.cast
        stream = Stream(response, StreamState(cast, call.on_progress, call.max_tokens))
        if call.stream:
            return stream
        assembler = Assembler()
        for chunk in stream:
            assembler.add(chunk)
        return assembler.result(stream.usage)

    def _send(self, call: Call) -> httpx.Response:
        body = call.body
        if call.assemble:
            body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        attempt = 0
        while True:
            attempt += 1
            try:
                request = self._http.build_request(
                    call.method, self._url(call.path), json=body, headers=self._headers()
                )
                response = self._http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                delay = self._retry_delay(attempt, None, None, None)
                if delay is None:
                    raise APITimeoutError(f"{call.method} {call.path} timed out: {exc}") from exc
                time.sleep(delay)
                continue
            except httpx.TransportError as exc:
                delay = self._retry_delay(attempt, None, None, None)
                if delay is None:
                    raise APIConnectionError(f"{call.method} {call.path}: cannot reach {self.base_url}: {exc}") from exc
                time.sleep(delay)
                continue
            if response.status_code < 400:
                return response
            content = response.read()
            response.close()
            error = parse_error(response.status_code, content, response.headers)
            delay = self._retry_delay(attempt, response.status_code, dict(response.headers), error.body)
            if delay is None:
                raise error
            time.sleep(delay)
