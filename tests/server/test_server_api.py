"""The API over a real uvicorn with the tiny model: OpenAI shapes (plain and SSE), parameters, ledger settlement,
disconnect -> abort, metrics, models, tokenize."""

import time

import httpx
import pytest

from tests.server.live import auth, sse_events

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}]}


def post(live, path, body, key="max", timeout=60, **kw):
    return httpx.post(live.api + path, json=body, headers=auth(live.keys[key]), timeout=timeout, **kw)


def test_chat_plain_shape_and_ledger(live):
    r = post(live, "/chat/completions", {**CHAT, "max_tokens": 8, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-") and body["model"] == "tiny"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 8 and usage["total_tokens"] == usage["prompt_tokens"] + 8
    assert r.headers["x-ratelimit-limit-requests"] == "300" and "x-ratelimit-remaining-tokens" in r.headers
    rows = [row for row in _rows(live) if row.request_id == body["id"]]
    assert len(rows) == 1 and rows[0].status == "settled"
    assert (rows[0].prompt_tokens, rows[0].completion_tokens) == (usage["prompt_tokens"], 8)
    assert live.ledger.check_integrity() == []


def test_chat_stream_is_openai_shaped(live):
    body = {
        **CHAT,
        "max_tokens": 6,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", live.api + "/chat/completions", json=body, headers=auth(live.keys["max"])) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [e for e in sse_events(r) if e[0] != "comment"]
    assert events[-1] == ("done", None)
    chunks = [data for kind, data in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert chunks[-2]["choices"][0]["finish_reason"] == "length" and chunks[-2]["choices"][0]["delta"] == {}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    plain = post(live, "/chat/completions", {**CHAT, "max_tokens": 6, "temperature": 0, "ignore_eos": True}).json()
    assert text == plain["choices"][0]["message"]["content"]  # streamed deltas add up to the same greedy answer


def test_stream_without_include_usage_has_no_usage_field(live):
    body = {**CHAT, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", live.api + "/chat/completions", json=body, headers=auth(live.keys["max"])) as r:
        chunks = [d for kind, d in sse_events(r) if kind == "data"]
    assert chunks and all("usage" not in c for c in chunks)


def test_completions_n_logprobs_echo_and_batch(live):
    r = post(
        live,
        "/completions",
        {"model": "tiny", "prompt": "Once upon", "max_tokens": 4, "n": 2, "seed": 7, "logprobs": 2, "ignore_eos": True},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "text_completion" and [c["index"] for c in body["choices"]] == [0, 1]
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == 4 and len(lp["token_logprobs"]) == 4 and all(len(t) == 2 for t in lp["top_logprobs"])
    assert body["usage"]["completion_tokens"] == 8
    echo = post(live, "/completions", {"model": "tiny", "prompt": "Once upon", "max_tokens": 2, "echo": True}).json()
    assert echo["choices"][0]["text"].startswith("Once upon")
    batch = post(
        live, "/completions", {"model": "tiny", "prompt": ["a b", "c d", "e"], "max_tokens": 2, "ignore_eos": True}
    ).json()
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2] and batch["usage"]["completion_tokens"] == 6
    ids = post(live, "/completions", {"model": "tiny", "prompt": [[1, 2, 3], [4, 5]], "max_tokens": 1}).json()
    assert ids["usage"]["prompt_tokens"] == 5 and len(ids["choices"]) == 2
    seeded = [
        post(
            live, "/completions", {"model": "tiny", "prompt": "x", "max_tokens": 5, "seed": 3, "temperature": 1.0}
        ).json()["choices"][0]["text"]
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


def test_completions_stream_chunks(live):
    body = {
        "model": "tiny",
        "prompt": "Hi",
        "max_tokens": 4,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", live.api + "/completions", json=body, headers=auth(live.keys["max"])) as r:
        events = [e for e in sse_events(r) if e[0] != "comment"]
    chunks = [d for kind, d in events if kind == "data"]
    assert events[-1] == ("done", None) and all(c["object"] == "text_completion" for c in chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == 4 and chunks[-2]["choices"][0]["finish_reason"] == "length"


def test_json_object_response_format_is_repaired(live):
    r = post(live, "/chat/completions", {**CHAT, "max_tokens": 4, "response_format": {"type": "json_object"}})
    assert r.status_code == 200  # the tiny model's words are noise; the request path (instruction + repair) runs


def test_disconnect_mid_stream_aborts_and_bills_what_was_generated(live):
    free = live.engine.engine.block_manager.num_free
    body = {**CHAT, "max_tokens": 400, "ignore_eos": True, "stream": True}
    seen = 0
    with httpx.stream("POST", live.api + "/chat/completions", json=body, headers=auth(live.keys["max"])) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                seen += 1
                if seen == 5:
                    request_id = line.split('"id":"')[1].split('"')[0]
                    break
    row = _wait_row(live, request_id, lambda row: row.status != "reserved")
    assert row.status == "failed" and 4 <= row.completion_tokens < 400
    _wait(lambda: not live.engine.engine.has_unfinished())
    assert live.engine.engine.block_manager.num_free == free
    assert live.ledger.check_integrity() == []


def test_disconnect_of_a_non_streaming_request_aborts_it(live, monkeypatch):
    # NOTE: the tiny model can write 450 tokens in well under the client's 0.3 s on an idle machine; 5 ms per engine
    # step keeps the request running (>= 2 s) long after the client has gone, so the race cannot settle it first
    runner = live.engine.engine.runner
    run = runner.run
    monkeypatch.setattr(runner, "run", lambda batch: (time.sleep(0.005), run(batch))[1])
    before = {r.request_id for r in _rows(live)}
    body = {**CHAT, "max_tokens": 450, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        post(live, "/chat/completions", body, timeout=0.3)  # the client gives up and closes the connection
    _wait(lambda: {r.request_id for r in _rows(live)} - before)
    (request_id,) = {r.request_id for r in _rows(live)} - before
    row = _wait_row(live, request_id, lambda row: row.status != "reserved")
    assert row.status == "failed" and row.completion_tokens < 450
    _wait(lambda: not live.engine.engine.has_unfinished())


def test_models_tokenize_metrics(live):
    models = httpx.get(live.api + "/models", headers=auth(live.keys["max"])).json()
    assert models["object"] == "list" and models["data"][0] == {
        "id": "tiny",
        "object": "model",
        "created": 0,
        "owned_by": "m3",
        "max_model_len": 512,
    }
    tok = post(live, "/tokenize", {"model": "tiny", "prompt": "hello world"}).json()
    assert tok == {"count": len(live.engine.tokenizer.encode("hello world")), "max_model_len": 512}
    tok = post(live, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert tok["count"] > 3
    metrics = httpx.get(live.url + "/metrics", headers=auth(live.keys["max"])).text
    for name in (
        "m3_requests_total",
        "m3_prompt_tokens_total",
        "m3_generation_tokens_total",
        "m3_time_to_first_token_seconds_bucket",
        "m3_time_per_output_token_seconds_bucket",
        "m3_num_requests_running",
        "m3_num_requests_waiting",
        "m3_kv_cache_usage_ratio",
        "m3_num_preemptions_total",
        "m3_msa_selected_blocks_share",
        "m3_engine_healthy 1.0",
    ):
        assert name in metrics, name
    assert 'm3_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics


@pytest.mark.parametrize("role", ["developer", "system"])
def test_chat_roles_and_text_parts(live, role):
    messages = [
        {"role": role, "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}]},
    ]
    r = post(live, "/chat/completions", {"messages": messages, "max_tokens": 2})
    assert r.status_code == 200, r.text


def _rows(live):
    import sqlalchemy as sa

    from m3.server.ledger import usage

    with live.ledger.engine.connect() as conn:
        return conn.execute(sa.select(usage)).all()


def _wait(cond, timeout=30.0):
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def _wait_row(live, request_id, cond):
    found = []

    def check():
        rows = [r for r in _rows(live) if r.request_id == request_id]
        found[:] = rows
        return rows and cond(rows[0])

    _wait(check)
    return found[0]
