"""POST /v1/chat/completions: validate, fold, open an answer (with failover), write it back."""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gptomni_relay.auth import require_api_key
from gptomni_relay.completion_writer import CompletionWriter
from gptomni_relay.errors import APIError
from gptomni_relay.event_stream import EventStreamResponse
from gptomni_relay.hang_up import HangUpWatch
from gptomni_relay.prompt import fold_conversation
from gptomni_relay.request_body import parse_request, read_limited_body
from gptomni_relay.runtime import RelayRuntime


async def chat_completions(request: Request) -> Response:
    await require_api_key(request)
    runtime: RelayRuntime = request.app.state.runtime
    started = time.monotonic()
    body = parse_request(await read_limited_body(request, runtime.settings.max_body_bytes), runtime)
    prompt = fold_conversation(body.messages)
    tried: set[str] = set()  # credentials this request has used, across re-opens
    try:
        answer = await runtime.opener.open(prompt, tried)
    except APIError as exc:
        runtime.metrics.observe_request(body.model, exc.status, body.stream, time.monotonic() - started)
        raise
    runtime.metrics.time_to_first_token.labels(body.model).observe(time.monotonic() - started)
    completion = CompletionWriter(runtime, body, prompt, answer, started)
    if body.stream:
        return EventStreamResponse(
            completion.sse_events(), ping_seconds=runtime.settings.sse_ping_seconds, headers={"x-request-id": completion.id}
        )
    async with HangUpWatch(request.receive):
        return await completion.json_response(
            reopen=lambda: runtime.opener.open(prompt, tried),
            attempts_left=lambda: len(tried) < runtime.opener.max_attempts and runtime.pool.unavailability(tried) is None,
        )
    return Response(status_code=499)  # the client hung up; nobody will read this


# A plain Starlette route: the body is read and validated here (size limit first, then
# OpenAI-style errors), so FastAPI's parameter machinery would only add work per request.
route = Route("/v1/chat/completions", chat_completions, methods=["POST"])
