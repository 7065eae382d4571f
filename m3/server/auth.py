"""Deny by default: an ASGI middleware in front of every route checks `Authorization: Bearer KEY`.

Only /health is open. Keys are checked against their sha256 hash in constant time (see ledger.authenticate); the
key's record lands in `request.state.api_key`. The same middleware caps request bodies and applies each plan's
requests-per-minute limit, adding OpenAI's `x-ratelimit-*` headers to every answer.
"""

import anyio.to_thread
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from m3.server.errors import APIError
from m3.server.ledger import Ledger
from m3.server.plans import Plan, RateLimiter, retry_after_header

OPEN_PATHS = frozenset({"/health"})


class _BodyTooLarge(HTTPException):
    """An HTTPException so FastAPI's body parsing re-raises it as it is (it turns other errors into a 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds {limit} bytes")


class AuthMiddleware:
    def __init__(self, app: ASGIApp, ledger: Ledger, plans: dict[str, Plan], max_body_bytes: int):
        self.app = app
        self.ledger = ledger
        self.plans = plans
        self.max_body_bytes = max_body_bytes
        self.limiter = RateLimiter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            key, plan = await self._authenticate(headers.get("authorization", ""))
            decision = self.limiter.hit(key.id, plan.requests_per_minute)
            rate_headers = {
                "x-ratelimit-limit-requests": str(decision.limit),
                "x-ratelimit-remaining-requests": str(decision.remaining),
                "x-ratelimit-reset-requests": f"{decision.reset_s:.3f}s",
            }
            if not decision.allowed:
                raise APIError(
                    429,
                    f"Rate limit reached for requests: {plan.requests_per_minute} per minute on plan {plan.name!r}. "
                    f"Try again in {decision.reset_s:.1f}s.",
                    type="requests",
                    code="rate_limit_exceeded",
                    headers={"retry-after": retry_after_header(decision.reset_s), **rate_headers},
                )
            length = headers.get("content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
                raise self._too_large()
        except APIError as exc:
            return await exc.response()(scope, receive, send)

        scope.setdefault("state", {})
        scope["state"]["api_key"] = key
        scope["state"]["plan"] = plan
        scope["state"]["extra_headers"] = rate_headers  # routes add the token-quota headers here
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = [(k.encode(), v.encode()) for k, v in scope["state"]["extra_headers"].items()]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, capped_receive, send_with_headers)

    async def _authenticate(self, authorization: str):
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' (create one with "
                "`m3 keys create`).",
                code="missing_api_key",
            )
        key = await anyio.to_thread.run_sync(self.ledger.authenticate, token.strip())
        if key is None:
            shown = token.strip()[:8] + "..." if len(token.strip()) > 8 else "***"
            raise APIError(401, f"Incorrect API key provided: {shown}", code="invalid_api_key")
        plan = self.plans.get(key.plan)
        if plan is None:
            raise APIError(403, f"the key's plan {key.plan!r} is not configured on this server", code="unknown_plan")
        return key, plan

    def _too_large(self) -> APIError:
        return APIError(413, f"request body exceeds {self.max_body_bytes} bytes", code="request_too_large")
