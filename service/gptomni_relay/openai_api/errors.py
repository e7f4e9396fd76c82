"""Every failure leaves the relay as an OpenAI error object with the right HTTP status.

`error_for` is the one place where the domain's errors (core/errors.py) become HTTP
statuses and OpenAI error codes.
"""

from __future__ import annotations

import logging
import math
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gptomni_relay.core.errors import (
    AllBusy,
    AllChallenged,
    AllCoolingDown,
    AnswerTooLarge,
    BadConversation,
    NoCredentials,
    RelayError,
    ServerBusy,
    UnusableAnswer,
    UpstreamFailed,
    UpstreamTimedOut,
)
from gptomni_relay.openai_api.schemas import ErrorBody, ErrorResponse

log = logging.getLogger(__name__)

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
# Where OpenAI's type is not the status's: an exhausted quota is its own type, which
# clients tell apart from a rate limit (wait and retry) by it.
_TYPE_BY_CODE = {"insufficient_quota": "insufficient_quota"}
# Longest Retry-After we tell a client: an hour is already "come back much later".
MAX_RETRY_AFTER_SECONDS = 3600


def new_request_id() -> str:
    """The `x-request-id` of a response that is no completion (an error, the models list):
    the SDKs read it into `request_id` / `requestID`, what a user quotes in a bug report.
    A completion's own id (`chatcmpl-...`, `resp_...`) is its request id."""
    return f"req_{uuid.uuid4().hex}"


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.retry_after = retry_after

    @property
    def type(self) -> str:
        if self.code in _TYPE_BY_CODE:
            return _TYPE_BY_CODE[self.code]
        return _TYPE_BY_STATUS.get(self.status, "api_error")

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorBody(message=self.message, type=self.type, param=self.param, code=self.code))

    def headers(self, request_id: str) -> dict[str, str]:
        headers = {"x-request-id": request_id}
        if self.retry_after is not None and math.isfinite(self.retry_after):
            headers["Retry-After"] = str(min(MAX_RETRY_AFTER_SECONDS, max(1, math.ceil(self.retry_after))))
        return headers

    def response(self, request_id: str | None = None) -> JSONResponse:
        return JSONResponse(self.body().model_dump(), status_code=self.status,
                            headers=self.headers(request_id or new_request_id()))


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _conversation_param(exc: BadConversation, name: str) -> str | None:
    if exc.message_index is None:
        return name
    param = f"{name}[{exc.message_index}]"
    return param if exc.part_index is None else f"{param}.content[{exc.part_index}]"


def error_for(exc: RelayError, conversation_param: str = "messages") -> APIError:
    """The OpenAI error a client sees for a domain error; `conversation_param` is what the
    client's surface calls its conversation (`messages`, `input`, `prompt`)."""
    if isinstance(exc, BadConversation):
        code = "unsupported_content" if exc.part_index is not None else "empty_conversation"
        return APIError(400, exc.message, param=_conversation_param(exc, conversation_param), code=code)
    if isinstance(exc, AllChallenged):
        return APIError(503, f"GPT-Omni is behind a Cloudflare challenge: {exc}.",
                        code="upstream_challenge", retry_after=exc.retry_after)
    if isinstance(exc, AllCoolingDown):
        return APIError(429, f"GPT-Omni is rate limiting the relay: {exc}.",
                        code="credentials_cooling_down", retry_after=exc.retry_after)
    if isinstance(exc, AllBusy):
        return APIError(429, "All GPT-Omni credentials are at their concurrency limit; retry shortly.",
                        code="credentials_busy", retry_after=exc.retry_after)
    if isinstance(exc, ServerBusy):
        return APIError(503, f"The relay is too busy to read this request: {exc}; retry shortly.",
                        code="server_busy", retry_after=exc.retry_after)
    if isinstance(exc, NoCredentials):
        return APIError(503, f"No usable GPT-Omni credential: {exc}.", code="no_credentials")
    if isinstance(exc, UpstreamTimedOut):
        return APIError(504, f"GPT-Omni timed out: {exc}.", code="upstream_timeout")
    if isinstance(exc, AnswerTooLarge):
        return APIError(502, f"GPT-Omni's answer is too large: {exc}.", code="upstream_answer_too_large")
    if isinstance(exc, UnusableAnswer):
        return APIError(502, f"GPT-Omni's answer could not be used: {exc}.", code=exc.code)
    if isinstance(exc, UpstreamFailed):
        return APIError(502, f"GPT-Omni failed: {exc}.", code="upstream_error")
    return APIError(503, str(exc), code="no_credentials")  # any other reason the pool cannot serve


def install_error_handlers(app: FastAPI) -> None:
    """Errors outside the chat route (which answers and counts its own): a wrong key on
    /v1/models, an unknown URL, a wrong method, an internal error. Each is counted, so
    key guessing and bugs show on the dashboard whichever route they hit."""

    def answer(request: Request, error: APIError) -> JSONResponse:
        request.app.state.relay.metrics.other_errors.labels(str(error.status)).inc()
        return error.response()

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(RelayError)
    async def _relay_error(request: Request, exc: RelayError) -> JSONResponse:
        return answer(request, error_for(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            error = APIError(404, f"Unknown request URL: {request.method} {request.url.path}", code="unknown_url")
        elif exc.status_code == 405:
            error = APIError(405, f"Method {request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        else:
            error = APIError(exc.status_code, str(exc.detail))
        return answer(request, error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"path": request.url.path})
        return answer(request, APIError(500, "The relay hit an internal error.", code="internal_error"))
