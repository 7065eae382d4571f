from tests.fixtures import tiny_model_dir  # noqa: F401
