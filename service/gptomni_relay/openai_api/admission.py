"""The admission step every answering route takes once it knows the model: may this key
use it, and is it within its limits (core/key_limits.py)? One place for every route.

`admit` refuses with 403 (a model the key may not use) or 429 (`rate_limit_exceeded` for
requests or concurrency, `insufficient_quota` for tokens, with `Retry-After`), and
otherwise holds the key's ticket in the request's scope. `KeyAdmissionMiddleware` adds
the `x-ratelimit-*` headers OpenAI sends (and its SDKs read) to the response, and ends
the ticket when the response is over, however it ended (a stream's last byte, an error,
a hang-up), counting the tokens the route reported through `token_counter`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gptomni_common.api_key_set import KeyLimits
from gptomni_relay.api_keys import Caller
from gptomni_relay.core.key_limits import KeyLimitExceeded, LimitKind, Ticket, Usage, has_limits
from gptomni_relay.openai_api.auth import CALLER_SCOPE_KEY
from gptomni_relay.openai_api.errors import APIError

ADMISSION_SCOPE_KEY = "gptomni.admission"
HEADERS_SCOPE_KEY = "gptomni.ratelimit_headers"


def reset_text(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: `20ms`, `1s`, `6m0s`, `1h2m3s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rate_limit_headers(limits: KeyLimits, usage: Usage) -> list[tuple[bytes, bytes]]:
    headers: list[tuple[str, str]] = []
    if limits.requests_per_minute is not None:
        headers += [("x-ratelimit-limit-requests", str(limits.requests_per_minute)),
                    ("x-ratelimit-remaining-requests", str(max(0, limits.requests_per_minute - usage.requests_in_window))),
                    ("x-ratelimit-reset-requests", reset_text(usage.requests_reset_seconds))]
    if limits.tokens_per_day is not None:
        headers += [("x-ratelimit-limit-tokens", str(limits.tokens_per_day)),
                    ("x-ratelimit-remaining-tokens", str(max(0, limits.tokens_per_day - usage.tokens_today))),
                    ("x-ratelimit-reset-tokens", reset_text(usage.seconds_to_midnight))]
    return [(name.encode(), value.encode()) for name, value in headers]


@dataclass
class Admission:
    caller: Caller
    ticket: Ticket
    tokens: int = 0


def _refusal(exc: KeyLimitExceeded) -> APIError:
    if exc.kind is LimitKind.TOKENS:
        return APIError(429, f"You exceeded your current quota: {exc}.", code="insufficient_quota",
                        retry_after=exc.retry_after)
    return APIError(429, f"Rate limit reached: {exc}.", code="rate_limit_exceeded", retry_after=exc.retry_after)


async def admit(request: Request, model: str) -> None:
    """Refuses what the request's key may not do; holds its limits' ticket otherwise."""
    caller: Caller | None = request.scope.get(CALLER_SCOPE_KEY)
    if caller is None:
        return
    relay = request.app.state.relay
    label = relay.metrics.key_label(caller.name)
    if not caller.may_use(model):
        relay.metrics.api_key_refusals.labels(label, "model").inc()
        raise APIError(403, f"This API key may not use the model '{model}'.", param="model", code="model_not_allowed")
    if caller.limits is None or not has_limits(caller.limits):
        return
    try:
        ticket = await relay.key_limiter.admit(caller.name, caller.limits)
    except KeyLimitExceeded as exc:
        relay.metrics.api_key_refusals.labels(label, exc.kind.value).inc()
        request.scope[HEADERS_SCOPE_KEY] = rate_limit_headers(caller.limits, exc.usage)
        raise _refusal(exc) from None
    request.scope[HEADERS_SCOPE_KEY] = rate_limit_headers(caller.limits, ticket.usage)
    request.scope[ADMISSION_SCOPE_KEY] = Admission(caller, ticket)


def token_counter(request: Request) -> Callable[[int], None]:
    """Where a route reports the tokens (prompt + completion) of its answer."""
    scope = request.scope

    def count(tokens: int) -> None:
        admission: Admission | None = scope.get(ADMISSION_SCOPE_KEY)
        if admission is not None:
            admission.tokens += tokens
        caller: Caller | None = scope.get(CALLER_SCOPE_KEY)
        if caller is not None and caller.limits is not None:
            metrics = request.app.state.relay.metrics
            metrics.api_key_tokens.labels(metrics.key_label(caller.name)).inc(tokens)

    return count


class KeyAdmissionMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and HEADERS_SCOPE_KEY in scope:
                message["headers"] = [*message.get("headers", ()), *scope[HEADERS_SCOPE_KEY]]
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            admission: Admission | None = scope.pop(ADMISSION_SCOPE_KEY, None)
            if admission is not None:
                relay = scope["app"].state.relay
                used = await relay.key_limiter.release(admission.ticket, admission.tokens)
                budget = admission.caller.limits.tokens_per_day if admission.caller.limits else None
                if budget:
                    relay.metrics.api_key_budget_used.labels(relay.metrics.key_label(admission.caller.name)).set(used / budget)
