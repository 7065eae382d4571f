"""EndpointModel speaks the OpenAI wire format against a real HTTP server on 127.0.0.1."""

import pytest
from conftest import FakeOpenAI

from m3.code.model import EndpointModel, ModelError, ScriptedModel


@pytest.fixture
def server():
    s = FakeOpenAI()
    yield s
    s.close()


def test_wire_format_and_usage(server):
    server.replies.append("hello")
    model = EndpointModel(server.base_url, api_key="sk-test", model="tiny", max_retries=0)
    reply = model.complete([{"role": "user", "content": "hi"}], temperature=0.0)
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens) == ("hello", 7, 3)
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sk-test"
    assert req["body"] == {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.0}


def test_retries_5xx_and_429_then_fails_fast_on_4xx(server):
    server.statuses += [503, 429]
    server.replies.append("third time")
    model = EndpointModel(server.base_url, max_retries=2)
    assert model.complete([{"role": "user", "content": "x"}]).text == "third time"
    server.statuses.append(401)
    with pytest.raises(ModelError, match="HTTP 401"):
        model.complete([{"role": "user", "content": "x"}])
    assert len(server.requests) == 4  # no retry after the 401


def test_unreachable_endpoint_is_a_model_error():
    model = EndpointModel("http://127.0.0.1:9/v1", max_retries=0, timeout_s=2)
    with pytest.raises(ModelError, match="failed after 1 tries"):
        model.complete([{"role": "user", "content": "x"}])


def test_scripted_model_queue():
    m = ScriptedModel(["a"])
    m.push("b")
    assert [m.complete([{"role": "user", "content": "q"}]).text for _ in range(2)] == ["a", "b"]
    with pytest.raises(ModelError):
        m.complete([])
