"""What every answering route does with an answer once it has one, whatever its wire
format: stream it (through the shaping core's TextCutter when the client asked for stops
or a token limit), send a whole shaped answer, count its tokens, and record the end of the
request in the metrics and the request log.

Each OpenAI surface (chat completions, legacy completions, Responses) subclasses
`AnswerWriter` with its own rendering: the events that open a stream, the event of one
piece, the events that close it or report a failure, and the objects of a whole answer.
The writer decides nothing about retries (core/failover.py does).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, ClassVar

from fastapi.responses import JSONResponse
from pydantic_core import to_json

from gptomni_relay.core.errors import UpstreamFailed
from gptomni_relay.core.failover import UpstreamAnswer, WholeAnswer
from gptomni_relay.core.shaping import FinishReason, ShapedAnswer, TextCutter
from gptomni_relay.core.usage import TokenUsage
from gptomni_relay.metrics import RelayMetrics
from gptomni_relay.openai_api.errors import APIError, error_for
from gptomni_relay.openai_api.event_stream import StreamEnd

log = logging.getLogger(__name__)

CLIENT_GONE = "499"  # nginx's name for a request whose client went away


class PieceTemplate:
    """Renders the per-piece event by splicing the JSON-encoded piece into the event
    rendered once around a marker: one model dump per stream, not per piece."""

    def __init__(self, render: Callable[[str], bytes]) -> None:
        marker = f"piece-{uuid.uuid4().hex}"
        self._frame_start, self._frame_end = render(marker).split(to_json(marker))

    def event(self, piece: str) -> bytes:
        return b"".join((self._frame_start, to_json(piece), self._frame_end))


class AnswerWriter(ABC):
    log_message: ClassVar[str]  # "chat completion finished", ...

    def __init__(self, metrics: RelayMetrics, model: str, stream: bool, prompt_tokens: int, started: float,
                 api_key: str, request_id: str) -> None:
        self.id = request_id
        self.created = int(time.time())
        self._metrics = metrics
        self._model = model  # a configured model id: the metrics' label
        self._stream = stream
        self._prompt_tokens = prompt_tokens
        self._started = started
        self._finished = False
        self._api_key = api_key  # the key's name (api_keys.py), never the key
        # Told the tokens of the answer, for the key's budget (openai_api/admission.py).
        self.on_usage: Callable[[int], None] = lambda tokens: None

    # --- what each surface renders ------------------------------------------------

    @abstractmethod
    def opening(self, first: str) -> bytes:
        """The events that open a stream, carrying `first` (possibly empty) as text."""

    @abstractmethod
    def piece_renderer(self) -> Callable[[str], bytes]:
        """The event of one further piece of text (the hot path: called once per piece)."""

    @abstractmethod
    def closing(self, finish_reason: FinishReason, completion_tokens: int) -> bytes:
        """The events that end a complete stream (usage accounted with `account`)."""

    @abstractmethod
    def failure(self, error: APIError) -> bytes:
        """The events that end a stream that broke after it started."""

    @abstractmethod
    def shaped_events(self, shaped: ShapedAnswer) -> Iterator[bytes]:
        """A whole shaped answer as a stream, its closing events last."""

    @abstractmethod
    def whole_object(self, shaped: ShapedAnswer) -> dict[str, Any]:
        """A whole shaped answer as the one JSON object of a non-streamed response."""

    # --- the common steps -----------------------------------------------------------

    async def sse_events(self, answer: UpstreamAnswer, cutter: TextCutter | None = None) -> AsyncGenerator[bytes, None]:
        """The answer as it arrives; with a `cutter`, only what its stops and token limit let
        through, and GPT-Omni is no longer read once it has cut the answer."""
        self._metrics.active_streams.inc()
        status = "200"
        try:
            pieces = answer.pieces()
            if cutter is None:
                yield self.opening(await anext(pieces))
                render = self.piece_renderer()
                async for piece in pieces:
                    yield render(piece)
                yield StreamEnd(self.closing("stop", answer.completion.tokens))
            else:
                yield self.opening("")
                render = self.piece_renderer()
                async for piece in pieces:
                    if text := cutter.feed(piece):
                        yield render(text)
                    if cutter.done:
                        break
                await pieces.aclose()
                if text := cutter.finish():
                    yield render(text)
                yield StreamEnd(self.closing(cutter.finish_reason or "stop", cutter.meter.tokens))
        except UpstreamFailed as exc:
            error = error_for(exc)
            status = str(error.status)
            yield StreamEnd(self.failure(error))
        except (asyncio.CancelledError, GeneratorExit):
            status = CLIENT_GONE
            raise
        except BaseException:
            status = "500"
            raise
        finally:
            # A hang-up arrives as one task cancellation, already spent by now, and closing
            # the upstream response never suspends: this clean-up always runs to the end.
            await answer.aclose()
            self._metrics.active_streams.dec()
            self.finish(status, answer.credential_id)

    async def shaped_sse_events(self, shaped: ShapedAnswer, credential_id: str) -> AsyncGenerator[bytes, None]:
        """A whole answer already shaped (tool calls, JSON), sent as the events an SDK assembles."""
        status = CLIENT_GONE
        try:
            events = list(self.shaped_events(shaped))
            for event in events[:-1]:
                yield event
            yield StreamEnd(events[-1])
            status = "200"
        finally:
            self.finish(status, credential_id)

    def json_response(self, answer: WholeAnswer) -> JSONResponse:
        return self.shaped_json_response(ShapedAnswer(answer.text, (), "stop", answer.completion_tokens),
                                         answer.credential_id)

    def shaped_json_response(self, shaped: ShapedAnswer, credential_id: str) -> JSONResponse:
        body = self.whole_object(shaped)
        self.finish("200", credential_id)
        return JSONResponse(body, headers={"x-request-id": self.id})

    def account(self, completion_tokens: int) -> TokenUsage:
        """The answer's usage, counted once: for the key's budget and the token metrics."""
        usage = TokenUsage(self._prompt_tokens, completion_tokens)
        self.on_usage(usage.total_tokens)
        self._metrics.prompt_tokens.labels(self._model).inc(usage.prompt_tokens)
        self._metrics.completion_tokens.labels(self._model).inc(usage.completion_tokens)
        return usage

    async def close_stream(self, answer: UpstreamAnswer) -> None:
        """After the response, whatever happened to it: the answer is closed (its slot
        freed) and the request counted, even if `sse_events` never got to start."""
        await answer.aclose()
        if not self._finished:
            self.finish(CLIENT_GONE, answer.credential_id)

    async def close_shaped_stream(self, credential_id: str) -> None:
        """`close_stream` for a stream of a whole answer: counted even if it never started."""
        if not self._finished:
            self.finish(CLIENT_GONE, credential_id)

    def finish(self, status: str, credential_id: str | None) -> None:
        """The request's end, whichever way it ended: its metrics and its log line."""
        self._finished = True
        duration = time.monotonic() - self._started
        self._metrics.observe_request(self._model, status, self._stream, duration, self._api_key)
        log.info(self.log_message, extra={
            "request_id": self.id, "model": self._model, "stream": self._stream, "status": status,
            "credential": credential_id, "api_key": self._api_key, "duration_ms": round(duration * 1000, 1),
        })
