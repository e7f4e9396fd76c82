"""The steps every answering route takes, whatever its wire format: authenticate, read
the request (the surface's own reader), admit it under the key's limits, fold the
conversation with the shaping core's instructions, get an answer (core/failover.py decides
every retry) while watching for a hang-up, and hand it to the surface's writer.

Every outcome is counted in `gptomni_requests_total`, refusals included (a wrong key, a
bad body, an internal error): key guessing and bugs must show on the dashboard. The
`model` label takes only configured model ids, so clients cannot grow its cardinality.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response

from gptomni_relay.core.conversation import Turn, fold_conversation
from gptomni_relay.core.errors import RelayError
from gptomni_relay.core.shaping import AnswerShape, TextCutter, instructions, shaped_answer
from gptomni_relay.core.usage import estimate_tokens
from gptomni_relay.edge.hang_up import HangUpWatch
from gptomni_relay.metrics import UNKNOWN_MODEL, RelayMetrics
from gptomni_relay.openai_api.admission import admit, token_counter
from gptomni_relay.openai_api.answer_writer import CLIENT_GONE, AnswerWriter
from gptomni_relay.openai_api.auth import require_api_key
from gptomni_relay.openai_api.errors import APIError, error_for, new_request_id
from gptomni_relay.openai_api.event_stream import EventStreamResponse
from gptomni_relay.openai_api.request_reading import read_limited_body
from gptomni_relay.settings import RelaySettings
from gptomni_relay.state import RelayState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Asked:
    """A request as its surface read it: what the common steps need, and the surface's
    own parsed body for its writer."""

    model: str  # the configured model id it names (an alias resolved): metrics, key admission
    stream: bool
    shape: AnswerShape
    turns: Sequence[Turn]
    body: Any


class Surface(Protocol):
    log_message: str  # the request log's message for a refusal
    conversation_param: str  # what the client calls its conversation ("messages", "input", "prompt")

    def read(self, raw: bytes, settings: RelaySettings) -> Asked: ...

    def writer(self, metrics: RelayMetrics, asked: Asked, prompt_tokens: int, started: float,
               api_key: str) -> AnswerWriter: ...


async def answer(request: Request, surface: Surface) -> Response:
    relay: RelayState = request.app.state.relay
    started = time.monotonic()
    model, stream, key_name = UNKNOWN_MODEL, False, None
    try:
        key_name = require_api_key(request)
        # The body holds its bytes of the relay's body budget until it is parsed, however
        # the reading ends (refused, the client gone, this task cancelled).
        with relay.body_budget.hold() as hold:
            asked = surface.read(await read_limited_body(request, relay.settings.max_body_bytes, hold), relay.settings)
        model, stream, shape = asked.model, asked.stream, asked.shape
        await admit(request, model)
        prompt = fold_conversation(asked.turns, instructions(shape))
        writer = surface.writer(relay.metrics, asked, estimate_tokens(prompt), started, key_name)
        writer.on_usage = token_counter(request)
        failover = relay.answers.failover(prompt)
        # The answer goes out as it arrives unless it must be whole first: not streamed, or
        # a tool call / JSON document that is known good only at its end.
        streams_pieces = stream and not shape.needs_whole_answer
        # Waiting for a slot, every attempt and the failover between them stop at once
        # when the client hangs up (the watch cancels this task), freeing the slot.
        async with HangUpWatch(request.receive) as watch:
            if streams_pieces:
                opened = await failover.open()
                first_piece_at = opened.first_piece_at
            elif shape.is_plain:
                whole = await failover.whole()
                first_piece_at = whole.first_piece_at
            else:
                whole, shaped = await shaped_answer(failover, shape, prompt)
                first_piece_at = whole.first_piece_at
        if watch.hung_up:
            writer.finish(CLIENT_GONE, None)
            return Response(status_code=499)  # nobody will read this
    # Answered inside the except clauses: an error kept past them would hold this frame
    # through its traceback, a cycle only the garbage collector frees (tests/test_no_cycles.py).
    except RelayError as exc:
        return _refuse(relay, surface, error_for(exc, surface.conversation_param), model, stream, started, key_name)
    except APIError as exc:
        return _refuse(relay, surface, exc, model, stream, started, key_name)
    relay.metrics.time_to_first_token.labels(model).observe(first_piece_at - started)
    if streams_pieces:
        cutter = None if shape.is_plain else TextCutter(shape.stops, shape.max_tokens)
        return _event_stream(relay, writer, writer.sse_events(opened, cutter), lambda: writer.close_stream(opened))
    if shape.is_plain:
        return writer.json_response(whole)
    if stream:
        return _event_stream(relay, writer, writer.shaped_sse_events(shaped, whole.credential_id),
                             lambda: writer.close_shaped_stream(whole.credential_id))
    return writer.shaped_json_response(shaped, whole.credential_id)


def _event_stream(relay: RelayState, writer: AnswerWriter, events: AsyncGenerator[bytes, None],
                  on_close: Callable[[], Awaitable[None]]) -> EventStreamResponse:
    return EventStreamResponse(events, ping_seconds=relay.settings.sse_ping_seconds,
                               write_timeout=relay.settings.client_write_timeout_seconds,
                               on_close=on_close, headers={"x-request-id": writer.id})


def _refuse(relay: RelayState, surface: Surface, error: APIError, model: str, stream: bool, started: float,
            key_name: str | None) -> Response:
    duration = time.monotonic() - started
    relay.metrics.observe_request(model, error.status, stream, duration, key_name)
    request_id = new_request_id()  # in the log line too: the id a client quotes finds it
    log.info(surface.log_message, extra={
        "request_id": request_id, "model": model, "stream": stream, "status": error.status, "code": error.code, "api_key": key_name,
        "duration_ms": round(duration * 1000, 1)})
    return error.response(request_id)
