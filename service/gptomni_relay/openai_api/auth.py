"""Bearer API-key check for the /v1 routes."""

from __future__ import annotations

import time

from starlette.requests import Request

from gptomni_relay.openai_api.errors import APIError

# The request's Caller (api_keys.py), for the admission step (admission.py).
CALLER_SCOPE_KEY = "gptomni.caller"


def require_api_key(request: Request) -> str:
    """The name of the request's API key (api_keys.py); refuses a missing, wrong or expired
    one alike, so a refusal never tells whether a key exists."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
    relay = request.app.state.relay
    caller = relay.keys.identify(token.strip())
    if caller is None or caller.expired(time.time()):
        if caller is not None:
            relay.metrics.api_key_refusals.labels(relay.metrics.key_label(caller.name), "expired").inc()
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    request.scope[CALLER_SCOPE_KEY] = caller
    return caller.name
