"""The official `openai` package against `m3 serve`'s app on a real uvicorn (127.0.0.1) with the real default model
(SmolLM2-135M-Instruct) and the real embedding model: models, chat (plain, streaming with include_usage),
completions, embeddings, and errors as the openai package's exception types."""

import math

import openai
import pytest

from tests.server.live import LiveServer, wait_healthy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from m3.config import Config
    from m3.engine.async_engine import AsyncEngine
    from m3.server.app import create_app
    from m3.server.embeddings import Embedder

    app = create_app(
        db_url=f"sqlite:///{tmp_path_factory.mktemp('e2e') / 'm3.db'}",
        engine_factory=lambda: AsyncEngine(Config()),  # owned by the app: loaded at startup, shut down after
        embedder_factory=Embedder,
    )
    key = app.state.m3.ledger.create_key("e2e", "max")[1]
    with LiveServer(app) as server:
        wait_healthy(server.url, timeout=300)
        while app.state.m3.embedder is None:
            import time

            time.sleep(0.1)
        yield openai.OpenAI(api_key=key, base_url=server.url + "/v1", max_retries=0), server.url


def test_models(client):
    c, _ = client
    models = {m.id: m for m in c.models.list()}
    assert models["SmolLM2-135M-Instruct"].model_extra["max_model_len"] == 8192
    assert "all-MiniLM-L6-v2" in models


def test_chat_plain_and_streaming_with_usage(client):
    c, _ = client
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    reply = c.chat.completions.create(model="SmolLM2-135M-Instruct", messages=messages, max_tokens=8, temperature=0)
    text = reply.choices[0].message.content
    assert "Paris" in text and reply.usage.completion_tokens <= 8
    assert reply.choices[0].finish_reason in ("stop", "length")
    stream = c.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=messages,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert chunks[0].choices[0].delta.role == "assistant"


def test_completions(client):
    c, _ = client
    out = c.completions.create(model="SmolLM2-135M-Instruct", prompt="1, 2, 3, 4,", max_tokens=3, temperature=0)
    assert out.choices[0].text.strip().startswith("5") and out.usage.prompt_tokens > 0


def test_embeddings(client):
    c, _ = client
    out = c.embeddings.create(
        model="all-MiniLM-L6-v2",
        input=["a cat sat on the mat", "a kitten sat on a rug", "quarterly tax filing deadline"],
    )
    vectors = [d.embedding for d in out.data]
    assert [len(v) for v in vectors] == [384] * 3 and out.usage.prompt_tokens > 0
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in vectors)
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    assert cos(vectors[0], vectors[1]) > cos(vectors[0], vectors[2]) + 0.3  # a real sentence model, not noise
    floats = c.embeddings.create(model="all-MiniLM-L6-v2", input="a cat", encoding_format="float").data[0].embedding
    assert len(floats) == 384


def test_errors_map_to_openai_exceptions(client):
    c, url = client
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": "hi"}], max_tokens=9000
        )
    assert err.value.code == "context_length_exceeded" and "8192" in err.value.message
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="m3-bad-key", base_url=url + "/v1", max_retries=0).models.list()
