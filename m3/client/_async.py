"""AsyncM3: the asyncio client (httpx.AsyncClient). Drives the shared flows of `_base` with awaits."""

import asyncio
from collections.abc import AsyncIterator

import httpx

from m3.client._base import BaseClient, Call, Flow, parse_error
from m3.client._streaming import Assembler, StreamState
from m3.client.errors import APIConnectionError, APITimeoutError


class AsyncStream:
    """`async for` typed chunks; `usage` is set once a usage chunk arrived. Closes the response at the end."""

    def __init__(self, response: httpx.Response, state: StreamState):
        self.response = response
        self._state = state

    @property
    def usage(self):
        return self._state.usage

    async def __aiter__(self) -> AsyncIterator:
        try:
            async for line in self.response.aiter_lines():
                chunk = self._state.feed(line)
                if chunk is not None:
                    yield chunk
                if self._state.done:
                    break
        finally:
            await self.response.aclose()

    async def close(self):
        await self.response.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()


class AsyncM3(BaseClient):
    """Asyncio client: every method is awaited (`stream=True` methods return an AsyncStream once awaited)."""

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 600.0,
        max_retries: int = 2,
        model: str = "default",
        http_client: httpx.AsyncClient | None = None,
        max_connections: int = 100,
        max_keepalive_connections: int = 20,
    ):
        super().__init__(api_key, base_url, timeout, max_retries, model)
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive_connections)
        self._http = http_client or httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10.0), limits=limits)

    async def close(self):
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    async def batch_complete(
        self, tasks: list[dict], max_concurrency: int = 8, return_exceptions: bool = False
    ) -> list:
        """Run completions.create(**task) for each task, at most max_concurrency at once; results in task order."""
        semaphore = asyncio.Semaphore(max(1, max_concurrency))

        async def one(task: dict):
            async with semaphore:
                return await self.completions.create(**task)

        return await asyncio.gather(*(one(t) for t in tasks), return_exceptions=return_exceptions)

    async def _run(self, flow: Flow):
        try:
            call = next(flow)
            while True:
                call = flow.send(await self._execute(call))
        except StopIteration as stop:
            return stop.value

    async def _execute(self, call: Call):
        response = await self._send(call)
        if not (call.stream or call.assemble):
            try:
                await response.aread()
                return call.cast.model_validate(response.json())
            finally:
                await response.aclose()
        cast = call.cast
        if call.assemble:
            from m3.protocol import ChatCompletion, ChatCompletionChunk

            cast = ChatCompletionChunk if call.cast is ChatCompletion else call.cast
        stream = AsyncStream(response, StreamState(cast, call.on_progress, call.max_tokens))
        if call.stream:
            return stream
        assembler = Assembler()
        async for chunk in stream:
            assembler.add(chunk)
        return assembler.result(stream.usage)

    async def _send(self, call: Call) -> httpx.Response:
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
                response = await self._http.send(request, stream=True)
            except httpx.TimeoutException as exc:
                delay = self._retry_delay(attempt, None, None, None)
                if delay is None:
                    raise APITimeoutError(f"{call.method} {call.path} timed out: {exc}") from exc
                await asyncio.sleep(delay)
                continue
            except httpx.TransportError as exc:
                delay = self._retry_delay(attempt, None, None, None)
                if delay is None:
                    raise APIConnectionError(f"{call.method} {call.path}: cannot reach {self.base_url}: {exc}") from exc
                await asyncio.sleep(delay)
                continue
            if response.status_code < 400:
                return response
            content = await response.aread()
            await response.aclose()
            error = parse_error(response.status_code, content, response.headers)
            delay = self._retry_delay(attempt, response.status_code, dict(response.headers), error.body)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
