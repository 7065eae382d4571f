"""Test helpers for the server and SDK tests: a real uvicorn on 127.0.0.1 in a thread, a scripted engine, plans."""

import asyncio
import json
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import uvicorn

from m3.engine.outputs import CompletionOutput, RequestOutput
from m3.server.plans import DEFAULT_PLANS, Plan
from tests.fixtures import MSA_TINY

# the announcement's plans plus small ones that make limits reachable in a test
TEST_PLANS = {
    **DEFAULT_PLANS,
    "ultra": Plan("ultra", None, 100_000, priority=2),
    "tiny": Plan("tiny", 600, 1000),  # 600 tokens a day
    "slow": Plan("slow", None, 2),  # 2 requests a minute
}


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 from a background thread (lifespan included)."""

    def __init__(self, app):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_healthy(url: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become healthy")


def sse_events(response: httpx.Response) -> list[tuple[str, object]]:
    """("data", parsed JSON) | ("done", None) | ("comment", text) for each SSE event of a streamed response."""
    events = []
    for line in response.iter_lines():
        if line.startswith(":"):
            events.append(("comment", line[1:].strip()))
        elif line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(("done", None) if data == "[DONE]" else ("data", json.loads(data)))
    return events


class ScriptedEngine:
    """Stands in for AsyncEngine where the model's exact words are the point (code tasks): replies are queued."""

    def __init__(self, tokenizer, max_model_len: int = 512):
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.is_healthy = True
        self.replies: list[str] = []
        self.prompts: list[list[int]] = []

    async def generate(self, prompt, params, request_id=None):
        ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        self.prompts.append(ids)
        text = self.replies.pop(0)
        await asyncio.sleep(0)
        token_ids = self.tokenizer.encode(text, add_special_tokens=False)[: params.max_tokens]
        out = CompletionOutput(0, text, token_ids, text, token_ids, "stop")
        yield RequestOutput(request_id or "scripted", ids, [out], True, len(ids))

    def stats(self) -> dict:
        return {"num_running": 0, "num_waiting": 0, "kv_usage": 0.0, "num_preemptions": 0, "msa_selected_share": None}

    def shutdown(self):
        pass


# -- fixtures (imported by the conftests of tests/server and tests/client) --
@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from m3.config import Config
    from m3.engine.async_engine import AsyncEngine

    engine = AsyncEngine(Config(model=tiny_model_dir, max_num_seqs=8, **MSA_TINY))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="session")
def live(tiny_engine, tmp_path_factory):
    """A server over the tiny engine with keys on every test plan: live.keys["max"], live.keys["tiny"], ..."""
    from m3.server.app import create_app

    db_url = f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'm3.db'}"
    app = create_app(tiny_engine, db_url, plans=TEST_PLANS, model_name="tiny", keepalive_s=0.5, checkpoint_s=0.2)
    ledger = app.state.m3.ledger
    keys = {plan: ledger.create_key(f"key-{plan}", plan)[1] for plan in TEST_PLANS}
    with LiveServer(app) as server:
        yield SimpleNamespace(
            url=server.url, api=server.url + "/v1", keys=keys, ledger=ledger, app=app, engine=tiny_engine
        )
