"""Bearer API-key check for the /v1 routes."""

from __future__ import annotations

from starlette.requests import Request

from gptomni_relay.api_keys import matching_name
from gptomni_relay.openai_api.errors import APIError


def require_api_key(request: Request) -> str:
    """The name of the request's API key (api_keys.py); refuses a missing or wrong one."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "Missing API key: send 'Authorization: Bearer <key>'.", code="invalid_api_key")
    name = matching_name(token.strip(), request.app.state.relay.api_keys)
    if name is None:
        raise APIError(401, "Incorrect API key provided.", code="invalid_api_key")
    return name
