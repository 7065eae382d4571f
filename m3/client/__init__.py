"""m3.client: the Python SDK for an m3 server (or any OpenAI-compatible endpoint), sync and async, no torch.

    from m3.client import M3
    client = M3(api_key="m3-...", base_url="http://127.0.0.1:8000/v1")
    reply = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], max_tokens=64)
    for chunk in client.chat.completions.create(messages=..., stream=True):
        print(chunk.choices[0].delta.content or "", end="")
    review = client.code.review(code=src, standards=["security"])
    result = client.analyze(path="./repo", task="Find security bugs", on_progress=print)

`AsyncM3` has the same methods, awaited. Retries (exponential backoff, Retry-After honoured) cover connection
errors, 408/409/429/5xx, never a spent quota (InsufficientQuotaError).
"""

from m3.client._async import AsyncM3, AsyncStream
from m3.client._base import AnalysisResult, Progress
from m3.client._sync import M3, Stream
from m3.client.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ContextLengthExceededError,
    ContextTooLongError,
    InsufficientQuotaError,
    InternalServerError,
    M3Error,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTooLargeError,
    UnprocessableEntityError,
)

__all__ = [
    "M3",
    "AsyncM3",
    "Stream",
    "AsyncStream",
    "Progress",
    "AnalysisResult",
    "M3Error",
    "APIConnectionError",
    "APITimeoutError",
    "APIStatusError",
    "BadRequestError",
    "ContextLengthExceededError",
    "ContextTooLongError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "RequestTooLargeError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InsufficientQuotaError",
    "InternalServerError",
]
