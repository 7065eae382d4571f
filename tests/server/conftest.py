"""Server test fixtures: one tiny-model engine and one live server (real uvicorn on 127.0.0.1) per session."""

from tests.fixtures import tiny_model_dir  # noqa: F401
from tests.server.live import live, tiny_engine  # noqa: F401
