"""The m3 API: an OpenAI-compatible FastAPI app over one AsyncEngine, with keys, plans, quotas and a usage ledger.

`create_app(engine, db_url)` takes a ready engine (tests) or an `engine_factory` that is called on a thread at
startup, so the port answers at once and /health says 503 "loading" until the model is in. Routes: chat.py
(chat, completions), code_tasks.py (code generate/review) and, here, models, embeddings, tokenize, health, metrics.
"""

import asyncio
import logging
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response

from m3.protocol import (
    MAX_EMBEDDING_INPUTS,
    EmbeddingRequest,
    EmbeddingResponse,
    Health,
    Model,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from m3.server import chat, code_tasks, inputs
from m3.server.admission import AdmissionGate
from m3.server.auth import OPEN_PATHS, AuthMiddleware
from m3.server.errors import APIError, install_error_handlers
from m3.server.generation import reserve
from m3.server.ledger import Ledger
from m3.server.metrics import Metrics, RequestCounter
from m3.server.plans import Plan, load_plans

log = logging.getLogger("m3.server")

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass
class ServerState:
    ledger: Ledger
    plans: dict[str, Plan]
    engine: object = None  # AsyncEngine once loaded
    embedder: object = None  # Embedder once loaded; stays None when embeddings are off
    model_name: str = DEFAULT_MODEL_NAME
    load_error: str | None = None
    embeddings_enabled: bool = True
    keepalive_s: float = 10.0  # SSE comment after this long without a chunk
    checkpoint_s: float = 5.0  # a running request's generated-token count reaches the ledger this often
    default_max_tokens: int = 4096  # when a request leaves max_tokens unset (capped by the context and the quota)
    max_batch_prompts: int = 64  # prompts in one /v1/completions request
    gate: AdmissionGate = field(default_factory=lambda: AdmissionGate(None))
    metrics: Metrics | None = None
    background: set = field(default_factory=set)


def create_app(
    engine=None,
    db_url: str | None = None,
    *,
    engine_factory=None,
    embedder=None,
    embedder_factory=None,
    plans: dict[str, Plan] | None = None,
    model_name: str | None = None,
    keepalive_s: float = 10.0,
    checkpoint_s: float = 5.0,
    default_max_tokens: int = 4096,
    max_body_bytes: int = 32 << 20,
    max_concurrent_seqs: int | None = None,
    recover_stale_after_s: float | None = None,
) -> FastAPI:
    """Build the app. engine: a ready AsyncEngine, or engine_factory() -> AsyncEngine run at startup (the app then
    owns it and shuts it down). embedder / embedder_factory likewise; with neither, /v1/embeddings answers 404.
    max_concurrent_seqs: sequences admitted to the engine at once (priority order beyond; default: the engine's
    max_num_seqs). recover_stale_after_s: settle reservations older than this at startup (default: all of them
    for SQLite, which one server owns; 15 minutes for a database that replicas share)."""
    ledger = Ledger(db_url)
    state = ServerState(
        ledger=ledger,
        plans=plans or load_plans(),
        engine=engine,
        embedder=embedder,
        model_name=model_name or _model_name(engine),
        embeddings_enabled=embedder is not None or embedder_factory is not None,
        keepalive_s=keepalive_s,
        checkpoint_s=checkpoint_s,
        default_max_tokens=default_max_tokens,
    )
    state.metrics = Metrics(lambda: state.engine)

    def set_engine(eng):
        state.engine = eng
        limit = max_concurrent_seqs or getattr(getattr(getattr(eng, "engine", None), "config", None), "max_num_seqs", 0)
        state.gate = AdmissionGate(limit or None)

    if engine is not None:
        set_engine(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stale = recover_stale_after_s if recover_stale_after_s is not None else (0 if ledger.is_sqlite else 900)
        recovered = await anyio.to_thread.run_sync(ledger.recover, stale)
        if recovered:
            log.warning("settled %d request(s) left reserved by a previous server process", recovered)
        tasks = []
        if engine is None and engine_factory is not None:
            tasks.append(asyncio.create_task(_load(state, engine_factory, set_engine, "model")))
        if embedder is None and embedder_factory is not None:
            tasks.append(asyncio.create_task(_load(state, embedder_factory, _setter(state, "embedder"), "embeddings")))
        yield
        for task in tasks:
            task.cancel()
        if state.background:
            await asyncio.gather(*state.background, return_exceptions=True)
        if engine is None and state.engine is not None:
            state.engine.shutdown()
        ledger.close()

    app = FastAPI(
        title="m3 API",
        version="0.1.0",
        lifespan=lifespan,
        description="OpenAI-compatible API over the m3 engine. Every route but /health needs a Bearer API key.",
    )
    app.state.m3 = state
    install_error_handlers(app)
    app.include_router(chat.router)
    app.include_router(code_tasks.router)
    _add_routes(app)
    app.openapi = lambda: _openapi(app)
    app.add_middleware(AuthMiddleware, ledger=ledger, plans=state.plans, max_body_bytes=max_body_bytes)
    known = set(app.openapi()["paths"]) | {r.path for r in app.routes if hasattr(r, "path")}
    app.add_middleware(RequestCounter, metrics=state.metrics, known_paths=known)
    return app


def _model_name(engine) -> str:
    path = getattr(getattr(getattr(engine, "engine", None), "config", None), "model", "") or ""
    return _name_from_path(path)


def _name_from_path(path: str) -> str:
    if not path:
        return DEFAULT_MODEL_NAME
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


def _setter(state: ServerState, attr: str):
    return lambda value: setattr(state, attr, value)


async def _load(state: ServerState, factory, setter, what: str):
    try:
        setter(await anyio.to_thread.run_sync(factory))
        log.info("%s ready", what)
    except Exception as exc:  # noqa: BLE001 - reported by /health, the server keeps answering
        log.exception("loading the %s failed", what)
        if what == "model":
            state.load_error = f"{type(exc).__name__}: {exc}"


def _add_routes(app: FastAPI):
    @app.get("/health", response_model=Health, responses={503: {"model": Health}}, summary="200 when ready to generate")
    async def health(request: Request):
        state: ServerState = request.app.state.m3
        if state.engine is not None and state.engine.is_healthy:
            return Health(status="ok")
        if state.load_error is not None:
            return JSONResponse(Health(status="failed", detail=state.load_error).model_dump(), 503)
        if state.engine is None:
            return JSONResponse(Health(status="loading").model_dump(), 503)
        detail = repr(getattr(state.engine, "error", None))
        return JSONResponse(Health(status="failed", detail=f"engine failed: {detail}").model_dump(), 503)

    @app.get(
        "/v1/models", response_model=ModelList, responses=inputs.ERRORS, summary="Models served, with context limit"
    )
    async def models(request: Request):
        state: ServerState = request.app.state.m3
        data = [Model(id=state.model_name, max_model_len=getattr(state.engine, "max_model_len", None))]
        if state.embedder is not None:
            data.append(Model(id=state.embedder.name, max_model_len=state.embedder.max_input_tokens))
        return ModelList(data=data)

    @app.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def metrics(request: Request):
        state: ServerState = request.app.state.m3
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/tokenize", response_model=TokenizeResponse, responses=inputs.ERRORS, summary="Count prompt tokens")
    async def tokenize(body: TokenizeRequest, request: Request):
        state = inputs.server_state(request)
        inputs.check_model(state, body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt or messages", param="prompt")
        if body.messages is not None:
            if not body.messages:
                raise APIError(400, "messages is empty", param="messages")
            messages = [
                {"role": m.role, "content": m.content if isinstance(m.content, str) else ""} for m in body.messages
            ]
            ids = await anyio.to_thread.run_sync(inputs.chat_prompt_ids, state, messages)
        else:
            ids = await anyio.to_thread.run_sync(state.engine.tokenizer.encode, body.prompt)
        return TokenizeResponse(count=len(ids), max_model_len=state.engine.max_model_len)

    @app.post(
        "/v1/embeddings", response_model=EmbeddingResponse, responses=inputs.ERRORS, summary="Sentence embeddings"
    )
    async def embeddings(body: EmbeddingRequest, request: Request):
        state: ServerState = request.app.state.m3
        embedder = state.embedder
        if embedder is None:
            if state.embeddings_enabled:
                raise APIError(503, "the embedding model is still loading", code="engine_unavailable")
            raise APIError(404, "embeddings are not enabled on this server", param="model", code="model_not_found")
        if body.model not in (embedder.name, "default"):
            raise APIError(
                404,
                f"The model '{body.model}' does not exist; embeddings use '{embedder.name}'.",
                param="model",
                code="model_not_found",
            )
        texts = [body.input] if isinstance(body.input, str) else list(body.input)
        if len(texts) > MAX_EMBEDDING_INPUTS:
            raise APIError(400, f"input takes at most {MAX_EMBEDDING_INPUTS} strings; got {len(texts)}", param="input")
        if any(not t for t in texts):
            raise APIError(400, "input strings must not be empty", param="input")
        if body.dimensions is not None and body.dimensions != embedder.dimensions:
            raise APIError(400, f"dimensions must be {embedder.dimensions} for {embedder.name}", param="dimensions")
        counts = await anyio.to_thread.run_sync(embedder.count_tokens, texts)
        for i, n in enumerate(counts):
            if n > embedder.max_input_tokens:
                raise APIError(
                    400,
                    f"input[{i}] has {n} tokens; {embedder.name} reads at most {embedder.max_input_tokens}",
                    param="input",
                    code="context_length_exceeded",
                )
        total = sum(counts)
        request_id = f"emb-{uuid.uuid4().hex}"
        key, plan = request.state.api_key, request.state.plan
        await reserve(
            state, key, plan, request.state.extra_headers, request_id, "embeddings", embedder.name, total, total
        )
        ok = False
        try:
            vectors = await embedder.embed(texts)
            ok = True
        finally:
            await anyio.to_thread.run_sync(state.ledger.settle, request_id, total, 0, "settled" if ok else "failed")
        state.metrics.prompt_tokens.inc(total)
        data = [{"index": i, "embedding": _encode(v, body.encoding_format)} for i, v in enumerate(vectors)]
        return EmbeddingResponse(data=data, model=embedder.name, usage={"prompt_tokens": total, "total_tokens": total})


def _encode(vector: list[float], encoding_format: str):
    if encoding_format == "float":
        return vector
    import base64
    import struct

    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _openapi(app: FastAPI) -> dict:
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        schema["security"] = [{"bearer": []}]
        for path in OPEN_PATHS:
            for op in schema["paths"].get(path, {}).values():
                op["security"] = []
        app.openapi_schema = schema
    return app.openapi_schema
