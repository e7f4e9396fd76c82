"""POST /v1/responses: the Responses surface's reader and writer for the steps every
answering route shares (answering.py). A stream is the event sequence the official SDKs
assemble (docs/responses.md), each event with its `sequence_number`."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gptomni_relay.core.shaping import FinishReason, ShapedAnswer
from gptomni_relay.metrics import RelayMetrics
from gptomni_relay.openai_api.answer_writer import AnswerWriter
from gptomni_relay.openai_api.answering import Asked, answer
from gptomni_relay.openai_api.errors import APIError
from gptomni_relay.openai_api.request_bounds import RESPONSES_BOUNDS
from gptomni_relay.openai_api.request_reading import model_id, validated
from gptomni_relay.openai_api.responses_reading import answer_shape, conversation, refuse_unsupported
from gptomni_relay.openai_api.responses_schemas import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    ErrorEvent,
    IncompleteDetails,
    OutputFunctionCall,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    ResponseError,
    ResponseEvent,
    ResponseLifecycleEvent,
    ResponseObject,
    ResponsesRequest,
    ResponseStatus,
    ResponseUsage,
    TextDeltaEvent,
    TextDoneEvent,
)
from gptomni_relay.settings import RelaySettings


def sse_named(event: ResponseEvent) -> bytes:
    """An event framed as OpenAI frames Responses events: its type as the SSE event name."""
    return b"event: " + event.type.encode() + b"\ndata: " + event.model_dump_json().encode() + b"\n\n"


class ResponsesSurface:
    log_message = "response finished"
    conversation_param = "input"

    def read(self, raw: bytes, settings: RelaySettings) -> Asked:
        body = validated(raw, ResponsesRequest, RESPONSES_BOUNDS)
        refuse_unsupported(body)
        model = model_id(body.model, settings)
        return Asked(model, bool(body.stream), answer_shape(body), conversation(body), body)

    def writer(self, metrics: RelayMetrics, asked: Asked, prompt_tokens: int, started: float,
               api_key: str) -> ResponsesWriter:
        return ResponsesWriter(metrics, asked, prompt_tokens, started, api_key)


class ResponsesWriter(AnswerWriter):
    log_message = "response finished"

    def __init__(self, metrics: RelayMetrics, asked: Asked, prompt_tokens: int, started: float, api_key: str) -> None:
        super().__init__(metrics, asked.model, asked.stream, prompt_tokens, started, api_key,
                         f"resp_{uuid.uuid4().hex}")
        self._body: ResponsesRequest = asked.body
        self._message_id = f"msg_{uuid.uuid4().hex}"
        self._sequence = -1
        self._sent: list[str] = []  # the text streamed so far: the done events repeat it whole

    def _next(self) -> int:
        self._sequence += 1
        return self._sequence

    def _response(self, status: ResponseStatus, output: list[OutputItem] | None = None,
                  usage: ResponseUsage | None = None, error: ResponseError | None = None,
                  incomplete: bool = False) -> ResponseObject:
        body = self._body
        fmt = body.text.format if body.text is not None and body.text.format is not None else None
        tool_choice = body.tool_choice if body.tool_choice is not None else "auto"
        return ResponseObject(
            id=self.id, created_at=self.created, status=status, error=error,
            incomplete_details=IncompleteDetails(reason="max_output_tokens") if incomplete else None,
            instructions=body.instructions, max_output_tokens=body.max_output_tokens, model=body.model,
            output=output or [], parallel_tool_calls=body.parallel_tool_calls is not False,
            temperature=body.temperature, top_p=body.top_p, user=body.user, metadata=body.metadata or {},
            text={"format": fmt.model_dump(by_alias=True) if fmt is not None else {"type": "text"}},
            tool_choice=tool_choice if isinstance(tool_choice, str) else tool_choice.model_dump(),
            tools=[tool.model_dump() for tool in body.tools or ()], usage=usage,
        )

    def _lifecycle(self, kind: str, response: ResponseObject) -> bytes:
        return sse_named(ResponseLifecycleEvent(type=kind, sequence_number=self._next(), response=response))

    def _usage(self, completion_tokens: int) -> ResponseUsage:
        usage = self.account(completion_tokens)
        return ResponseUsage(input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens,
                             total_tokens=usage.total_tokens)

    def _message(self, status: str, text: str | None) -> OutputMessage:
        return OutputMessage(id=self._message_id, status=status,
                             content=[] if text is None else [OutputText(text=text)])

    # --- a stream of text as it arrives ----------------------------------------------------

    def _start(self) -> bytes:
        started = self._response("in_progress")
        return self._lifecycle("response.created", started) + self._lifecycle("response.in_progress", started)

    def _message_opening(self, output_index: int) -> bytes:
        return b"".join((
            sse_named(OutputItemEvent(type="response.output_item.added", sequence_number=self._next(),
                                      output_index=output_index, item=self._message("in_progress", None))),
            sse_named(ContentPartEvent(type="response.content_part.added", sequence_number=self._next(),
                                       item_id=self._message_id, output_index=output_index,
                                       part=OutputText(text=""))),
        ))

    def _message_closing(self, output_index: int, text: str, status: str) -> tuple[bytes, OutputMessage]:
        message = self._message(status, text)
        events = b"".join((
            sse_named(TextDoneEvent(sequence_number=self._next(), item_id=self._message_id,
                                    output_index=output_index, text=text)),
            sse_named(ContentPartEvent(type="response.content_part.done", sequence_number=self._next(),
                                       item_id=self._message_id, output_index=output_index,
                                       part=OutputText(text=text))),
            sse_named(OutputItemEvent(type="response.output_item.done", sequence_number=self._next(),
                                      output_index=output_index, item=message)),
        ))
        return events, message

    def opening(self, first: str) -> bytes:
        events = self._start() + self._message_opening(0)
        return events + self.piece_renderer()(first) if first else events

    def piece_renderer(self) -> Callable[[str], bytes]:
        # The delta event rendered once around two markers, spliced per piece: the relay's
        # per-piece cost stays one join, as on the chat path.
        number_marker, text_marker = 918273645546372819, f"piece-{uuid.uuid4().hex}"
        rendered = sse_named(TextDeltaEvent(sequence_number=number_marker, item_id=self._message_id,
                                            output_index=0, delta=text_marker))
        before_number, rest = rendered.split(str(number_marker).encode())
        before_text, after_text = rest.split(to_json(text_marker))
        sent = self._sent

        def render(piece: str) -> bytes:
            sent.append(piece)
            return b"".join((before_number, str(self._next()).encode(), before_text, to_json(piece), after_text))

        return render

    def closing(self, finish_reason: FinishReason, completion_tokens: int) -> bytes:
        incomplete = finish_reason == "length"
        events, message = self._message_closing(0, "".join(self._sent), "incomplete" if incomplete else "completed")
        return events + self._final([message], completion_tokens, incomplete)

    def _final(self, output: list[OutputItem], completion_tokens: int, incomplete: bool) -> bytes:
        response = self._response("incomplete" if incomplete else "completed", output,
                                  self._usage(completion_tokens), incomplete=incomplete)
        return self._lifecycle("response.incomplete" if incomplete else "response.completed", response)

    def failure(self, error: APIError) -> bytes:
        # `error` carries the relay's own code; the response's error takes the codes
        # OpenAI's schema lists (a 429 is rate_limit_exceeded, anything else server_error).
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        return (sse_named(ErrorEvent(sequence_number=self._next(), code=error.code, message=error.message,
                                     param=error.param))
                + self._lifecycle("response.failed", self._response(
                    "failed", error=ResponseError(code=code, message=error.message))))

    # --- a whole answer (tool calls, JSON), streamed or not ----------------------------------

    def _output(self, shaped: ShapedAnswer) -> list[OutputItem]:
        incomplete = shaped.finish_reason == "length"
        output: list[OutputItem] = []
        if shaped.content or not shaped.tool_calls:
            output.append(self._message("incomplete" if incomplete else "completed", shaped.content or ""))
        output += [OutputFunctionCall(id=f"fc_{uuid.uuid4().hex}", call_id=call.id, name=call.name,
                                      arguments=call.arguments, status="completed") for call in shaped.tool_calls]
        return output

    def shaped_events(self, shaped: ShapedAnswer) -> Iterator[bytes]:
        yield self._start()
        output = self._output(shaped)
        for index, item in enumerate(output):
            if isinstance(item, OutputMessage):
                text = item.content[0].text
                yield self._message_opening(index)
                if text:
                    yield sse_named(TextDeltaEvent(sequence_number=self._next(), item_id=item.id, output_index=index,
                                                   delta=text))
                yield self._message_closing(index, text, item.status)[0]
            else:
                opened = item.model_copy(update={"arguments": "", "status": "in_progress"})
                yield sse_named(OutputItemEvent(type="response.output_item.added", sequence_number=self._next(),
                                                output_index=index, item=opened))
                yield sse_named(ArgumentsDeltaEvent(sequence_number=self._next(), item_id=item.id,
                                                    output_index=index, delta=item.arguments))
                yield sse_named(ArgumentsDoneEvent(sequence_number=self._next(), item_id=item.id,
                                                   output_index=index, name=item.name, arguments=item.arguments))
                yield sse_named(OutputItemEvent(type="response.output_item.done", sequence_number=self._next(),
                                                output_index=index, item=item))
        yield self._final(output, shaped.completion_tokens, shaped.finish_reason == "length")

    def whole_object(self, shaped: ShapedAnswer) -> dict[str, Any]:
        incomplete = shaped.finish_reason == "length"
        return self._response("incomplete" if incomplete else "completed", self._output(shaped),
                              self._usage(shaped.completion_tokens), incomplete=incomplete).model_dump()


_SURFACE = ResponsesSurface()


async def responses(request: Request) -> Response:
    return await answer(request, _SURFACE)


route = Route("/v1/responses", responses, methods=["POST"])
