"""Every error leaves the server in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.

`APIError` is raised by routes; the handlers here also reshape FastAPI's validation errors (400, as OpenAI sends,
not 422), unknown routes and methods, and anything unexpected (500, logged, no traceback to the client).
"""

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from m3.protocol import error_body

log = logging.getLogger("m3.server")

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}
_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "server_error")
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), self.status, self.headers)


def bad_value(exc: ValueError) -> APIError:
    """A user's bad value (SamplingParams, engine checks) as a 400; the message names the field first."""
    message = str(exc)
    match = re.match(r"([a-z_]+) must", message)
    code = "context_length_exceeded" if "context limit" in message else None
    return APIError(400, message, param=match.group(1) if match else None, code=code)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more error(s))"
        return APIError(400, message, param=param, code="invalid_value").response()

    @app.exception_handler(HTTPException)
    async def _http(_request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = "Unknown route; see /docs for the API."
        code = _CODES.get(exc.status_code)
        return APIError(exc.status_code, message, code=code, headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unhandled error")
        return APIError(500, f"internal server error ({type(exc).__name__})", type="server_error").response()
