"""AsyncEngine: the engine on a background thread, with asyncio streams per request.

Requests and aborts travel to the engine thread through a command queue and are applied between steps, so the
model never sees a half-changed batch; outputs travel back through each request's asyncio.Queue. A failed step
fails every open stream and marks the engine dead (the server's /health turns 503).
"""

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterator

from m3.config import Config
from m3.engine.llm_engine import LLMEngine
from m3.engine.outputs import RequestOutput
from m3.sampling_params import SamplingParams


class EngineDeadError(RuntimeError):
    pass


class AsyncEngine:
    def __init__(self, config: Config | None = None, engine: LLMEngine | None = None):
        self.engine = engine or LLMEngine(config or Config())
        self.tokenizer = self.engine.tokenizer
        self.max_model_len = self.engine.max_model_len
        self._commands: queue.Queue = queue.Queue()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self.error: BaseException | None = None
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="m3-engine", daemon=True)
        self._thread.start()

    @property
    def is_healthy(self) -> bool:
        return self.error is None and not self._stopped and self._thread.is_alive()

    async def generate(
        self, prompt: str | list[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Yield a RequestOutput each step that changes the request; the last has finished=True.

        Raises ValueError for bad input before anything is queued. Leaving the iteration early (a client that
        disconnects, a cancelled task) aborts the request and frees its pages.
        """
        if self.error is not None:
            raise EngineDeadError(f"engine failed: {self.error!r}")
        loop = asyncio.get_running_loop()
        stream: asyncio.Queue = asyncio.Queue()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("add", (prompt, params, request_id, loop, stream), future))
        request_id = await asyncio.wrap_future(future)
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    raise EngineDeadError(f"engine failed: {item!r}") from item
                yield item
                if item.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self._commands.put(("abort", request_id, None))

    async def abort(self, request_id: str):
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("abort", request_id, future))
        await asyncio.wrap_future(future)

    def stats(self) -> dict:
        """A snapshot for metrics (read without locks: values may be one step old)."""
        s = self.engine.scheduler
        return {
            "num_running": len(s.running),
            "num_waiting": len(s.waiting),
            "kv_usage": self.engine.block_manager.usage(),
            "num_preemptions": s.num_preemptions,
            "msa_selected_share": self.engine.runner.selected_share(),
        }

    def shutdown(self):
        self._stopped = True
        self._commands.put(("stop", None, None))
        self._thread.join(timeout=30)

    # -- engine thread --
    def _loop(self):
        while not self._stopped:
            block = not self.engine.has_unfinished()
            try:
                while True:
                    cmd = self._commands.get(block=block)
                    block = False
                    self._apply(*cmd)
            except queue.Empty:
                pass
            if self._stopped or not self.engine.has_unfinished():
                continue
            try:
                outputs = self.engine.step()
            except BaseException as exc:  # noqa: BLE001 - every stream must hear about it
                self.error = exc
                for loop, stream in self._streams.values():
                    loop.call_soon_threadsafe(stream.put_nowait, exc)
                self._streams.clear()
                return
            for out in outputs:
                self._send(out)

    def _apply(self, kind: str, payload, future: concurrent.futures.Future | None):
        if kind == "stop":
            self._stopped = True
        elif kind == "add":
            prompt, params, request_id, loop, stream = payload
            try:
                rid = self.engine.add_request(prompt, params, request_id)
            except Exception as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)
                return
            self._streams[rid] = (loop, stream)
            future.set_result(rid)
        elif kind == "abort":
            out = self.engine.abort_request(payload)
            if out is not None:
                self._send(out)
            if future is not None:
                future.set_result(None)

    def _send(self, out: RequestOutput):
        target = self._streams.get(out.request_id)
        if target is None:
            return
        if out.finished:
            del self._streams[out.request_id]
        loop, stream = target
        try:
            loop.call_soon_threadsafe(stream.put_nowait, out)
        except RuntimeError:  # the caller's event loop closed under it: nobody listens, free the request
            self._streams.pop(out.request_id, None)
            if not out.finished:
                self.engine.abort_request(out.request_id)
