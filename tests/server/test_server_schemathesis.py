"""Property-based run over the OpenAPI schema (schemathesis): whatever the generated request, no 5xx.

Bounded: 25 examples per operation (M3_FUZZ_EXAMPLES=N for a longer hunt) against an engine capped at 64 tokens of
context, so every generation is short; no shrinking."""

import os
import tempfile

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error

from tests.fixtures import MSA_TINY
from tests.server.live import TEST_PLANS, LiveServer, auth


def _schema() -> dict:
    from m3.server.app import create_app

    return create_app(None, f"sqlite:///{tempfile.mkdtemp()}/schema.db", plans=TEST_PLANS).openapi()


schema = schemathesis.openapi.from_dict(_schema())


@pytest.fixture(scope="module")
def fuzz_server(tiny_model_dir, tmp_path_factory):
    from m3.config import Config
    from m3.engine.async_engine import AsyncEngine
    from m3.server.app import create_app
    from m3.server.embeddings import Embedder

    engine = AsyncEngine(Config(model=tiny_model_dir, max_model_len=64, **MSA_TINY))
    app = create_app(
        engine,
        f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'm3.db'}",
        plans=TEST_PLANS,
        embedder=_FakeEmbedder(),
        model_name="tiny",
    )
    key = app.state.m3.ledger.create_key("fuzzer", "ultra")[1]
    with LiveServer(app) as server:
        yield server.url, key
    engine.shutdown()
    del Embedder


class _FakeEmbedder:
    """Shapes of the real one (tested in the end-to-end module) without loading it here."""

    name = "all-MiniLM-L6-v2"
    dimensions = 4
    max_input_tokens = 32

    def count_tokens(self, texts):
        return [len(t.split()) + 2 for t in texts]

    async def embed(self, texts):
        return [[0.5, 0.5, 0.5, 0.5] for _ in texts]


@schema.parametrize()
@settings(
    max_examples=int(os.environ.get("M3_FUZZ_EXAMPLES", "25")),
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case, fuzz_server):
    url, key = fuzz_server
    case.call_and_validate(base_url=url, headers=auth(key), checks=[not_a_server_error], timeout=60)
