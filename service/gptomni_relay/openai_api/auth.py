"""Bearer API-key check for the /v1 routes."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from gptomni_relay.openai_api.errors import APIError


def key_matches(token: str, keys: list[bytes]) -> bool:
    presented = token.encode("utf-8")
    matched = False
    for key in keys:  # no early exit: every key is compared, in constant time each
        matched |= hmac.compare_digest(presented, key)
    return matched


def require_api_key(request: Request) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
    if not key_matches(token.strip(), request.app.state.relay.api_keys):
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
