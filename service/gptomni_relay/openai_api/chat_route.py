"""POST /v1/chat/completions: authenticate, read the request, fold the conversation, get
an answer (core/failover.py decides every retry) and render it.

Every outcome is counted in `gptomni_requests_total`, refusals included (a wrong key, a
bad body, an internal error): key guessing and bugs must show on the dashboard. The
`model` label takes only configured model ids, so clients cannot grow its cardinality.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gptomni_relay.core.conversation import fold_conversation
from gptomni_relay.core.errors import RelayError
from gptomni_relay.core.usage import estimate_tokens
from gptomni_relay.metrics import UNKNOWN_MODEL
from gptomni_relay.openai_api.admission import admit, token_counter
from gptomni_relay.openai_api.auth import require_api_key
from gptomni_relay.openai_api.completion_writer import CLIENT_GONE, CompletionWriter
from gptomni_relay.openai_api.errors import APIError, error_for
from gptomni_relay.openai_api.event_stream import EventStreamResponse
from gptomni_relay.openai_api.hang_up import HangUpWatch
from gptomni_relay.openai_api.request_reading import conversation, parse_request, read_limited_body
from gptomni_relay.state import RelayState

log = logging.getLogger(__name__)


async def chat_completions(request: Request) -> Response:
    relay: RelayState = request.app.state.relay
    started = time.monotonic()
    model, stream, key_name = UNKNOWN_MODEL, False, None
    try:
        key_name = require_api_key(request)
        body = parse_request(await read_limited_body(request, relay.settings.max_body_bytes), relay.settings.models)
        model, stream = body.model, body.stream
        await admit(request, model)
        prompt = fold_conversation(conversation(body))
        writer = CompletionWriter(relay.metrics, body, estimate_tokens(prompt), started, key_name)
        writer.on_usage = token_counter(request)
        failover = relay.answers.failover(prompt)
        # Waiting for a slot, every attempt and the failover between them stop at once
        # when the client hangs up (the watch cancels this task), freeing the slot.
        async with HangUpWatch(request.receive) as watch:
            if stream:
                answer = await failover.open()
                first_piece_at = answer.first_piece_at
            else:
                whole = await failover.whole()
                first_piece_at = whole.first_piece_at
        if watch.hung_up:
            writer.finish(CLIENT_GONE, None)
            return Response(status_code=499)  # nobody will read this
    # Answered inside the except clauses: an error kept past them would hold this frame
    # through its traceback, a cycle only the garbage collector frees (tests/test_no_cycles.py).
    except RelayError as exc:
        return _refuse(relay, error_for(exc), model, stream, started, key_name)
    except APIError as exc:
        return _refuse(relay, exc, model, stream, started, key_name)
    relay.metrics.time_to_first_token.labels(model).observe(first_piece_at - started)
    if stream:
        return EventStreamResponse(writer.sse_events(answer), ping_seconds=relay.settings.sse_ping_seconds,
                                   write_timeout=relay.settings.client_write_timeout_seconds,
                                   on_close=lambda: writer.close_stream(answer), headers={"x-request-id": writer.id})
    return writer.json_response(whole)


def _refuse(relay: RelayState, error: APIError, model: str, stream: bool, started: float,
            key_name: str | None) -> Response:
    duration = time.monotonic() - started
    relay.metrics.observe_request(model, error.status, stream, duration, key_name)
    log.info("chat completion finished", extra={
        "model": model, "stream": stream, "status": error.status, "code": error.code, "api_key": key_name,
        "duration_ms": round(duration * 1000, 1)})
    return error.response()


# A plain Starlette route: the body is read and validated here (size limit first, then
# OpenAI-style errors), so FastAPI's parameter machinery would only add work per request.
route = Route("/v1/chat/completions", chat_completions, methods=["POST"])
