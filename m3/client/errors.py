"""Exceptions of the m3 SDK: one class per HTTP failure kind, carrying the server's OpenAI-shaped error fields."""


class M3Error(Exception):
    """Base of every SDK error."""


class APIConnectionError(M3Error):
    """The server could not be reached (after retries)."""


class APITimeoutError(APIConnectionError):
    """The request timed out (after retries)."""


class ContextTooLongError(M3Error, ValueError):
    """A prompt does not fit the model's context; checked before sending (`analyze`)."""

    def __init__(self, message: str, num_tokens: int, max_model_len: int):
        super().__init__(message)
        self.num_tokens = num_tokens
        self.max_model_len = max_model_len


class APIStatusError(M3Error):
    """The server answered with an error status; `type`, `code` and `param` are the OpenAI error fields."""

    def __init__(self, message: str, status_code: int, body: dict | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body or {}
        self.headers = headers or {}
        error = self.body.get("error") if isinstance(self.body.get("error"), dict) else {}
        self.type = error.get("type")
        self.code = error.get("code")
        self.param = error.get("param")


class BadRequestError(APIStatusError):
    pass


class ContextLengthExceededError(BadRequestError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class RequestTooLargeError(APIStatusError):
    pass


class UnprocessableEntityError(APIStatusError):
    """The server could not turn the model's answer into the promised structure (code.review)."""


class RateLimitError(APIStatusError):
    pass


class InsufficientQuotaError(RateLimitError):
    """The key's daily token quota is spent; never retried (the answer will not change before 00:00 UTC)."""


class InternalServerError(APIStatusError):
    pass


def error_for(status: int, body: dict | None, headers: dict | None = None) -> APIStatusError:
    body = body if isinstance(body, dict) else {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    message = error.get("message") or f"HTTP {status}"
    code = error.get("code")
    if status == 400:
        cls = ContextLengthExceededError if code == "context_length_exceeded" else BadRequestError
    elif status == 429:
        cls = InsufficientQuotaError if code == "insufficient_quota" else RateLimitError
    elif status >= 500:
        cls = InternalServerError
    else:
        cls = {
            401: AuthenticationError,
            403: PermissionDeniedError,
            404: NotFoundError,
            413: RequestTooLargeError,
            422: UnprocessableEntityError,
        }.get(status, APIStatusError)
    return cls(f"{status} {message}", status, body, headers)
