"""One API request's life on the engine: reserve quota, wait for admission, stream, checkpoint, settle.

`Run.events()` merges the engine streams of every prompt in the request into one ordered event stream, with
keep-alives while nothing happens (queued, or a long prefill). Whatever ends the iteration (done, error, client
gone, task cancelled) lands in its `finally`: the engine requests are aborted and the ledger row is settled with the
tokens produced, shielded from cancellation so a disconnect can never skip the bill.
"""

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import anyio.to_thread

from m3.server.errors import APIError, bad_value
from m3.server.ledger import QuotaExceeded, seconds_until_reset


@dataclass
class Event:
    kind: str  # keepalive | progress | output | error
    index: int = 0  # which prompt of the request (completions take several)
    output: object = None  # RequestOutput for "output"
    done: int = 0  # prefill progress for "progress"
    total: int = 0
    error: APIError | None = None


class Run:
    def __init__(self, state, request, endpoint: str, prompts: list[list[int]], params, id_prefix: str):
        self.state = state
        self.key = request.state.api_key
        self.plan = request.state.plan
        self.headers: dict[str, str] = request.state.extra_headers
        self.endpoint = endpoint
        self.prompts = prompts
        self.params = params
        self.id = f"{id_prefix}-{uuid.uuid4().hex}"
        self.num_prompt_tokens = sum(len(p) for p in prompts)
        self.latest: list = [None] * len(prompts)  # newest RequestOutput per prompt
        self.error: APIError | None = None
        self.arrival = time.monotonic()
        self._reserved = False

    @property
    def num_completion_tokens(self) -> int:
        return sum(o.num_generated_tokens for o in self.latest if o is not None)

    @property
    def is_finished(self) -> bool:
        return all(o is not None and o.finished for o in self.latest)

    async def reserve(self) -> None:
        """Book prompt + the most this request can generate against the key's daily quota (429 when spent)."""
        tokens = self.num_prompt_tokens + self.params.max_tokens * self.params.n * len(self.prompts)
        await reserve(
            self.state,
            self.key,
            self.plan,
            self.headers,
            self.id,
            self.endpoint,
            self.state.model_name,
            self.num_prompt_tokens,
            tokens,
        )
        self._reserved = True

    async def events(self) -> AsyncIterator[Event]:
        queue: asyncio.Queue = asyncio.Queue()
        pumps = [asyncio.create_task(self._pump(i, queue)) for i in range(len(self.prompts))]
        num_open = len(pumps)
        last_checkpoint = time.monotonic()
        last_token_at = [None] * len(self.prompts)
        metrics = self.state.metrics
        try:
            while num_open:
                try:
                    event = await asyncio.wait_for(queue.get(), self.state.keepalive_s)
                except TimeoutError:
                    yield Event("keepalive")
                    continue
                if event is None:
                    num_open -= 1
                    continue
                if event.kind == "error":
                    self.error = event.error
                    yield event
                    return
                i, out = event.index, event.output
                before = self.latest[i].num_generated_tokens if self.latest[i] is not None else 0
                self.latest[i] = out
                new_tokens = out.num_generated_tokens - before
                now = time.monotonic()
                if new_tokens:
                    if last_token_at[i] is None:
                        metrics.ttft.observe(now - self.arrival)
                    else:
                        for _ in range(new_tokens):
                            metrics.time_per_token.observe((now - last_token_at[i]) / new_tokens)
                    last_token_at[i] = now
                elif not out.finished:
                    yield Event("progress", i, done=out.num_computed_prompt_tokens, total=out.num_prompt_tokens)
                    continue
                yield event
                if now - last_checkpoint >= self.state.checkpoint_s:
                    last_checkpoint = now
                    await anyio.to_thread.run_sync(self.state.ledger.checkpoint, self.id, self.num_completion_tokens)
        finally:
            for task in pumps:
                task.cancel()
            with anyio.CancelScope(shield=True):
                await asyncio.gather(*pumps, return_exceptions=True)
                await self._settle()

    async def collect(self) -> list:
        """Run to the end without streaming; returns the final RequestOutput per prompt (raises APIError)."""
        async for event in self.events():
            if event.kind == "error":
                raise event.error
        return self.latest

    async def _pump(self, index: int, queue: asyncio.Queue):
        engine = self.state.engine
        try:
            async with self.state.gate.admit(self.plan.priority, self.params.n):
                async for out in engine.generate(self.prompts[index], self.params, request_id=f"{self.id}-{index}"):
                    queue.put_nowait(Event("output", index, out))
        except ValueError as exc:
            queue.put_nowait(Event("error", index, error=bad_value(exc)))
        except Exception as exc:  # noqa: BLE001 - the engine died: the client hears a 503
            queue.put_nowait(
                Event("error", index, error=APIError(503, f"the engine failed: {exc}", code="engine_failed"))
            )
        finally:
            queue.put_nowait(None)

    async def _settle(self):
        if not self._reserved:
            return
        self._reserved = False
        ok = (
            self.error is None
            and self.is_finished
            and all(c.finish_reason in ("stop", "length") for o in self.latest for c in o.outputs)
        )
        completion = self.num_completion_tokens
        metrics = self.state.metrics
        metrics.prompt_tokens.inc(self.num_prompt_tokens)
        metrics.generation_tokens.inc(completion)
        await anyio.to_thread.run_sync(
            self.state.ledger.settle, self.id, self.num_prompt_tokens, completion, "settled" if ok else "failed"
        )


async def reserve(
    state, key, plan, headers: dict, request_id: str, endpoint: str, model: str, prompt_tokens: int, tokens: int
):
    """Reserve `tokens` for a request in the ledger; a spent quota is a 429 insufficient_quota that must not be
    retried. Adds the token-quota headers to the response."""
    limit = plan.tokens_per_day
    try:
        await anyio.to_thread.run_sync(
            state.ledger.reserve, key, request_id, endpoint, model, prompt_tokens, tokens, limit
        )
    except QuotaExceeded as exc:
        raise APIError(
            429,
            str(exc),
            type="insufficient_quota",
            code="insufficient_quota",
            headers={
                "x-should-retry": "false",
                "x-ratelimit-limit-tokens": str(exc.limit),
                "x-ratelimit-remaining-tokens": str(max(0, exc.limit - exc.used)),
                "x-ratelimit-reset-tokens": f"{seconds_until_reset()}s",
            },
        ) from exc
    if limit is not None:
        used = await anyio.to_thread.run_sync(state.ledger.used_today, key)
        headers["x-ratelimit-limit-tokens"] = str(limit)
        headers["x-ratelimit-remaining-tokens"] = str(max(0, limit - used))
        headers["x-ratelimit-reset-tokens"] = f"{seconds_until_reset()}s"
