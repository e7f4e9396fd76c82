"""Reading and validating a chat completion request: size limit, JSON, schema, what we can honour."""

from __future__ import annotations

import orjson
from fastapi import Request
from pydantic import ValidationError
from starlette.requests import ClientDisconnect

from gptomni_relay.errors import APIError, bad_request, validation_param
from gptomni_relay.runtime import RelayRuntime
from gptomni_relay.schemas import ChatCompletionRequest


async def read_limited_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"Request body is larger than the {limit}-byte limit.", code="request_too_large")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise APIError(413, f"Request body is larger than the {limit}-byte limit.", code="request_too_large")
    except ClientDisconnect:
        # Nobody will read the answer; say so in the logs and metrics, not as a crash.
        raise APIError(400, "The client disconnected while sending the request body.", code="client_disconnected") from None
    return bytes(body)


def parse_request(raw: bytes, runtime: RelayRuntime) -> ChatCompletionRequest:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise bad_request("We could not parse the JSON body of your request: it is not valid UTF-8 JSON.",
                          code="invalid_json") from None
    if not isinstance(data, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    try:
        request = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        param = validation_param(tuple(first["loc"]))
        raise bad_request(f"Invalid value for '{param or 'body'}': {first['msg']}.", param=param) from None
    if request.n is not None and request.n > 1:
        raise bad_request("Only n=1 is supported: GPT-Omni returns one answer per prompt.", param="n")
    if request.tools:
        raise bad_request("Tool calling is not supported by GPT-Omni's web chat.", param="tools")
    if request.functions:
        raise bad_request("Function calling is not supported by GPT-Omni's web chat.", param="functions")
    if request.model not in runtime.settings.models:
        raise APIError(404, f"The model '{request.model}' does not exist. Available: {', '.join(runtime.settings.models)}.",
                       param="model", code="model_not_found")
    return request
