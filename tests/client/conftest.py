"""SDK test fixtures: the tiny-model engine behind a live server (real uvicorn on 127.0.0.1)."""

from tests.fixtures import tiny_model_dir  # noqa: F401
from tests.server.live import live, tiny_engine  # noqa: F401
