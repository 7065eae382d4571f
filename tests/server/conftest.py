"""Server test fixtures: one tiny-model engine and one live server (real uvicorn on 127.0.0.1) per session."""

from types import SimpleNamespace

import pytest

from tests.fixtures import MSA_TINY, tiny_model_dir  # noqa: F401
from tests.server.live import TEST_PLANS, LiveServer


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):  # noqa: F811
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
