"""Shared fixtures: the default GGUF model and transformers' reading of it (the reference our loaders must match)."""

import os

import pytest


@pytest.fixture(scope="session")
def gguf_path() -> str:
    from m3.models.loader import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def hf_gguf_tokenizer(gguf_path):
    """transformers' tokenizer built from the default GGUF (a few seconds: built once per session)."""
    import transformers

    return transformers.AutoTokenizer.from_pretrained(os.path.dirname(gguf_path), gguf_file=os.path.basename(gguf_path))
