"""Every error the API promises, in OpenAI's shape and status; deny by default; /health while loading or failed;
prefill progress and keep-alives on long prompts, and a disconnect during prefill."""

import threading
import time

import httpx
import pytest

from tests.fixtures import MSA_TINY
from tests.server.live import TEST_PLANS, LiveServer, auth, sse_events

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 2}


def assert_error(r: httpx.Response, status: int, code: str | None = None, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def test_every_route_but_health_needs_a_key(live):
    schema = live.app.openapi()
    routes = {(path, method.upper()) for path, ops in schema["paths"].items() for method in ops}
    routes |= {(r.path, m) for r in live.app.routes if hasattr(r, "methods") for m in r.methods or ()}
    routes |= {("/no/such/route", "GET"), ("/v1/chat/completions", "GET"), ("/docs", "GET"), ("/openapi.json", "GET")}
    assert ("/metrics", "GET") in routes and ("/v1/embeddings", "POST") in routes
    for path, method in sorted(routes):
        for headers in ({}, auth("m3-000000000000-wrong"), {"Authorization": "Basic abc"}):
            r = httpx.request(method, live.url + path, headers=headers, json={})
            if path == "/health":
                assert r.status_code == 200
                continue
            if method == "HEAD":  # no body to check
                assert r.status_code == 401, path
                continue
            error = assert_error(r, 401)
            assert error["code"] in ("missing_api_key", "invalid_api_key"), (path, method)
    # with a key, the open world is still shaped: unknown route 404, wrong method 405
    assert_error(httpx.get(live.url + "/nope", headers=auth(live.keys["max"])), 404, "not_found")
    assert_error(httpx.get(live.api + "/chat/completions", headers=auth(live.keys["max"])), 405)


def test_revoked_key_is_refused(live):
    record, key = live.ledger.create_key("soon-revoked", "plus")
    assert httpx.get(live.api + "/models", headers=auth(key)).status_code == 200
    live.ledger.revoke_key("soon-revoked")
    assert_error(httpx.get(live.api + "/models", headers=auth(key)), 401, "invalid_api_key")


@pytest.mark.parametrize(
    "body, status, code, param",
    [
        ({**CHAT, "model": "gpt-4"}, 404, "model_not_found", "model"),
        ({**CHAT, "temperature": 3}, 400, "invalid_value", "temperature"),
        ({**CHAT, "n": 100}, 400, "invalid_value", "n"),
        ({**CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, None, "stop"),
        ({**CHAT, "messages": []}, 400, "invalid_value", "messages"),
        ({**CHAT, "messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value", None),
        ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, None, "tools"),
        (
            {**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            400,
            "unsupported_content",
            None,
        ),
        ({"model": "tiny"}, 400, "invalid_value", "messages"),
    ],
)
def test_bad_chat_requests(live, body, status, code, param):
    r = httpx.post(live.api + "/chat/completions", json=body, headers=auth(live.keys["max"]))
    assert_error(r, status, code, param)


def test_bad_json_and_oversized_body(live):
    r = httpx.post(
        live.api + "/chat/completions",
        content=b"{not json",
        headers={**auth(live.keys["max"]), "content-type": "application/json"},
    )
    assert_error(r, 400)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (33 << 20)}]}
    assert_error(httpx.post(live.api + "/chat/completions", json=big, headers=auth(live.keys["max"])), 413)


def test_context_length_exceeded_names_both_numbers(live):
    r = httpx.post(live.api + "/chat/completions", json={**CHAT, "max_tokens": 600}, headers=auth(live.keys["max"]))
    error = assert_error(r, 400, "context_length_exceeded", "messages")
    assert "maximum context length is 512 tokens" in error["message"] and "600 in the completion" in error["message"]
    long_prompt = list(range(100, 700))
    r = httpx.post(
        live.api + "/completions",
        json={"model": "tiny", "prompt": long_prompt, "max_tokens": 1},
        headers=auth(live.keys["max"]),
    )
    assert "601 tokens (600 in the prompt" in assert_error(r, 400, "context_length_exceeded", "prompt")["message"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": [10**9]}, "prompt"),
        ({"prompt": "x", "suffix": "y"}, "suffix"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
    ],
)
def test_bad_completion_requests(live, body, param):
    r = httpx.post(live.api + "/completions", json={"model": "tiny", **body}, headers=auth(live.keys["max"]))
    assert_error(r, 400, None, param)


def test_rate_limit_429_with_retry_after(live):
    headers = auth(live.keys["slow"])  # 2 requests per minute
    for _ in range(2):
        assert httpx.get(live.api + "/models", headers=headers).status_code == 200
    r = httpx.get(live.api + "/models", headers=headers)
    error = assert_error(r, 429, "rate_limit_exceeded")
    assert error["type"] == "requests"
    assert 1 <= int(r.headers["retry-after"]) <= 60
    assert r.headers["x-ratelimit-limit-requests"] == "2" and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in r.headers


def test_daily_quota_reserves_settles_and_then_refuses(live):
    headers = auth(live.keys["tiny"])  # 600 tokens a day
    key = next(k for k in live.ledger.list_keys() if k.name == "key-tiny")
    r = httpx.post(live.api + "/chat/completions", json={**CHAT, "max_tokens": 700}, headers=headers)
    assert_error(r, 400, "context_length_exceeded")  # context is checked before the quota
    r = httpx.post(
        live.api + "/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 500, "n": 2}, headers=headers
    )
    error = assert_error(r, 429, "insufficient_quota")
    assert error["type"] == "insufficient_quota" and "600" in error["message"]
    assert r.headers["x-should-retry"] == "false" and r.headers["x-ratelimit-limit-tokens"] == "600"
    # reserved prompt + 400, settled at the real count (EOS may end it early)
    r = httpx.post(
        live.api + "/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 400}, headers=headers
    )
    assert r.status_code == 200, r.text
    used = r.json()["usage"]["total_tokens"]
    assert live.ledger.used_today(key) == used
    assert int(r.headers["x-ratelimit-remaining-tokens"]) == 600 - 400 - r.json()["usage"]["prompt_tokens"]
    # max_tokens left unset: clamped to what the quota still allows, so the request runs
    r = httpx.post(
        live.api + "/completions", json={"model": "tiny", "prompt": "hi", "ignore_eos": True}, headers=headers
    )
    assert r.status_code == 200, r.text
    assert live.ledger.used_today(key) == 600 or r.json()["choices"][0]["finish_reason"] == "stop"
    r = httpx.post(
        live.api + "/completions", json={"model": "tiny", "prompt": "hi there friend", "max_tokens": 1}, headers=headers
    )
    if live.ledger.used_today(key) + 4 > 600:
        assert_error(r, 429, "insufficient_quota")
    assert live.ledger.check_integrity() == []


def test_health_is_503_while_loading_and_after_failure(tiny_engine, tmp_path):
    from m3.server.app import create_app

    release = threading.Event()

    def slow_factory():
        release.wait(30)
        return tiny_engine

    app = create_app(db_url=f"sqlite:///{tmp_path / 'a.db'}", engine_factory=slow_factory, plans=TEST_PLANS)
    key = app.state.m3.ledger.create_key("k", "max")[1]
    with LiveServer(app) as server:
        r = httpx.get(server.url + "/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert_error(httpx.post(server.url + "/v1/chat/completions", json=CHAT, headers=auth(key)), 503)
        release.set()
        deadline = time.time() + 10
        while httpx.get(server.url + "/health").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        app.state.m3.engine = None  # NOTE: the app does not own the shared engine: keep lifespan off it

    def broken_factory():
        raise RuntimeError("weights are corrupt")

    app = create_app(db_url=f"sqlite:///{tmp_path / 'b.db'}", engine_factory=broken_factory, plans=TEST_PLANS)
    with LiveServer(app) as server:
        deadline = time.time() + 10
        while (r := httpx.get(server.url + "/health")).json()["status"] == "loading":
            assert time.time() < deadline
            time.sleep(0.05)
        assert r.status_code == 503 and r.json() == {"status": "failed", "detail": "RuntimeError: weights are corrupt"}


@pytest.fixture(scope="module")
def chunked(tiny_model_dir, tmp_path_factory):
    """A server whose engine prefills 16 tokens a step, so a 480-token prompt takes 30 steps."""
    from m3.config import Config
    from m3.engine.async_engine import AsyncEngine
    from m3.server.app import create_app

    engine = AsyncEngine(Config(model=tiny_model_dir, **{**MSA_TINY, "block_size": 16}, max_num_batched_tokens=16))
    db_url = f"sqlite:///{tmp_path_factory.mktemp('chunked') / 'm3.db'}"
    app = create_app(engine, db_url, plans=TEST_PLANS, keepalive_s=0.01, checkpoint_s=0.1)
    key = app.state.m3.ledger.create_key("k", "max")[1]
    with LiveServer(app) as server:
        yield server, key, engine, app.state.m3.ledger
    engine.shutdown()


def test_long_prefill_streams_progress_and_keepalives(chunked):
    server, key, engine, ledger = chunked
    body = {"model": "default", "prompt": list(range(100, 580)), "max_tokens": 2, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=auth(key)) as r:
        events = sse_events(r)
    progress = [
        tuple(map(int, text.split()[1].split("/")))
        for kind, text in events
        if kind == "comment" and text.startswith("prefill ")
    ]
    assert len(progress) >= 10 and all(total == 480 for _, total in progress)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress) and progress[-1][0] < 480
    first_data = next(i for i, e in enumerate(events) if e[0] == "data")
    assert first_data >= len(progress)  # all progress comes before the first token
    assert events[-1] == ("done", None)


class _SlowStart:
    """The tiny engine, but every request waits 0.5 s before its first step (a busy engine, a long queue)."""

    def __init__(self, engine):
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    async def generate(self, prompt, params, request_id=None):
        import asyncio

        await asyncio.sleep(0.5)
        async for out in self._engine.generate(prompt, params, request_id):
            yield out


def test_keepalive_comments_while_waiting(tiny_engine, tmp_path):
    from m3.server.app import create_app

    app = create_app(
        _SlowStart(tiny_engine), f"sqlite:///{tmp_path / 'k.db'}", plans=TEST_PLANS, model_name="tiny", keepalive_s=0.1
    )
    key = app.state.m3.ledger.create_key("k", "max")[1]
    with LiveServer(app) as server:
        body = {**CHAT, "stream": True}
        with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, headers=auth(key)) as r:
            events = sse_events(r)
    keepalives = [i for i, e in enumerate(events) if e == ("comment", "keep-alive")]
    assert len(keepalives) >= 3 and events[-1] == ("done", None), events


def test_disconnect_during_prefill_aborts_within_a_chunk(chunked):
    server, key, engine, ledger = chunked
    free = engine.engine.block_manager.num_free
    body = {"model": "default", "prompt": list(range(100, 580)), "max_tokens": 5, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=auth(key)) as r:
        for line in r.iter_lines():
            if line.startswith(": prefill "):
                steps_at_disconnect = engine.engine.num_steps
                break
    deadline = time.time() + 10
    while engine.engine.has_unfinished():
        assert time.time() < deadline
        time.sleep(0.01)
    assert engine.engine.num_steps - steps_at_disconnect <= 3, "prefill kept running after the client left"
    assert engine.engine.block_manager.num_free == free
    assert ledger.check_integrity() == []
    import sqlalchemy as sa

    from m3.server.ledger import usage

    with ledger.engine.connect() as conn:
        row = conn.execute(sa.select(usage).order_by(usage.c.id.desc())).first()
    assert row.status == "failed" and row.completion_tokens == 0 and row.prompt_tokens == 480
