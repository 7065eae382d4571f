"""The wire format: OpenAI-compatible request/response models (pydantic), shared by `m3.server` and `m3.client`.

Requests ignore unknown fields (as OpenAI-compatible servers do); responses follow OpenAI's shapes field for field,
plus m3's task endpoints (code generation and review) and /v1/tokenize. No torch here: the SDK imports this module.
"""

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Caps that keep one request bounded; the server enforces them through these models.
MAX_N = 8
MAX_STOP = 4
MAX_EMBEDDING_INPUTS = 256
MAX_TOP_LOGPROBS = 20


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Response(BaseModel):
    model_config = ConfigDict(extra="allow")  # a newer server may add fields; old clients keep working


# -- errors --
class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(_Response):
    error: ErrorDetail


# -- shared request knobs --
class StreamOptions(_Request):
    include_usage: bool = False


class ResponseFormat(_Request):
    type: Literal["text", "json_object"] = "text"


class _SamplingRequest(_Request):
    """The OpenAI sampling parameters the engine supports, plus top_k / min_p / repetition_penalty as extras."""

    model: str = "default"
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    n: int = Field(1, ge=1, le=MAX_N)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: float | None = Field(None, ge=0.01, le=10.0)  # NOTE: near 0 it overflows the logits
    ignore_eos: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


# -- chat --
class ContentPart(_Request):
    type: str
    text: str | None = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class ChatCompletionRequest(_SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[dict] | None = None


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = []


class ChoiceLogprobs(_Response):
    content: list[TokenLogprob] | None = None


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None = None


class ChatChoice(_Response):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None


class Usage(_Response):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ChoiceDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(_Response):
    index: int
    delta: ChoiceDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None


class ChatCompletionChunk(_Response):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# -- completions --
class CompletionRequest(_SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_N)
    suffix: str | None = None


class CompletionLogprobs(_Response):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length", "abort"] | None = None


class Completion(_Response):
    """Also the shape of each streamed chunk, as in OpenAI's API."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


# -- embeddings --
class EmbeddingRequest(_Request):
    input: str | list[str] = Field(min_length=1)
    model: str = "default"
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class Embedding(_Response):
    index: int
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


# -- models --
class Model(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "m3"
    max_model_len: int | None = None  # the context limit in tokens (prompt + output)


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[Model]


# -- tokenize (counts a prompt before sending it: `m3 analyze`) --
class TokenizeRequest(_Request):
    model: str = "default"
    prompt: str | None = None
    messages: list[ChatMessage] | None = None


class TokenizeResponse(_Response):
    count: int
    max_model_len: int


# -- code tasks --
class CodeGenerateRequest(_Request):
    model: str = "default"
    prompt: str = Field(min_length=1)
    language: str = "python"
    framework: str | None = None
    include_tests: bool = False
    context: str | None = None  # existing code the new code must fit
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)


class CodeFile(_Response):
    path: str
    language: str | None = None
    content: str


class CodeGeneration(_Response):
    id: str
    object: Literal["code.generation"] = "code.generation"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    language: str
    files: list[CodeFile]
    explanation: str = ""
    usage: Usage


class CodeReviewRequest(_Request):
    model: str = "default"
    code: str | None = None
    diff: str | None = None  # a unified diff; give code or diff
    standards: list[str] = Field(default_factory=lambda: ["correctness", "security", "performance", "style"])
    language: str | None = None
    filename: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)


Severity = Literal["critical", "high", "medium", "low", "info"]


class ReviewIssue(BaseModel):
    model_config = ConfigDict(extra="ignore")

    severity: Severity
    file: str | None = None
    line: int | None = Field(None, ge=0)
    message: str = Field(min_length=1)
    suggestion: str | None = None


class ReviewBody(BaseModel):
    """What the model must produce for a review (validated, after repair)."""

    model_config = ConfigDict(extra="ignore")

    issues: list[ReviewIssue]
    quality_score: int = Field(ge=0, le=100)
    summary: str = ""


class CodeReview(ReviewBody):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["code.review"] = "code.review"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    usage: Usage


# -- health --
class Health(_Response):
    status: Literal["ok", "loading", "failed"]
    detail: str | None = None


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
