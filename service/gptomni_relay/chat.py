"""POST /v1/chat/completions: validate, fold, open an answer, write it as JSON or SSE."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator

import anyio
import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.requests import ClientDisconnect

from gptomni_relay.answer import OpenAnswer, upstream_error
from gptomni_relay.auth import require_api_key
from gptomni_relay.errors import APIError, bad_request, validation_param
from gptomni_relay.prompt import fold_conversation
from gptomni_relay.runtime import RelayRuntime
from gptomni_relay.schemas import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
)
from gptomni_relay.upstream import UpstreamError
from gptomni_relay.usage import estimate_usage

log = logging.getLogger(__name__)

router = APIRouter(dependencies=[Depends(require_api_key)])


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


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    runtime: RelayRuntime = request.app.state.runtime
    started = time.monotonic()
    body = parse_request(await read_limited_body(request, runtime.settings.max_body_bytes), runtime)
    stream_label = "true" if body.stream else "false"
    prompt = fold_conversation(body.messages)
    try:
        answer = await runtime.opener.open(prompt)
    except APIError as exc:
        runtime.metrics.requests.labels(body.model, str(exc.status), stream_label).inc()
        runtime.metrics.request_duration.labels(stream_label).observe(time.monotonic() - started)
        raise
    runtime.metrics.time_to_first_token.labels(body.model).observe(time.monotonic() - started)
    completion = CompletionWriter(runtime, body, prompt, answer, started)
    if body.stream:
        return EventSourceResponse(
            completion.sse_events(),
            sep="\n",
            ping=runtime.settings.sse_ping_seconds,
            shutdown_grace_period=runtime.settings.shutdown_grace_seconds,
            headers={"x-request-id": completion.id},
        )
    return await completion.json_response()


class CompletionWriter:
    def __init__(self, runtime: RelayRuntime, body: ChatCompletionRequest, prompt: str,
                 answer: OpenAnswer, started: float) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self._runtime = runtime
        self._body = body
        self._prompt = prompt
        self._answer = answer
        self._started = started

    def _chunk(self, delta: Delta, finish: bool = False) -> str:
        chunk = ChatCompletionChunk(
            id=self.id, created=self.created, model=self._body.model,
            choices=[ChunkChoice(delta=delta, finish_reason="stop" if finish else None)],
        )
        return chunk.model_dump_json()

    async def sse_events(self) -> AsyncIterator[dict[str, str]]:
        metrics = self._runtime.metrics
        metrics.active_streams.inc()
        status = "200"
        try:
            first = True
            async for piece in self._answer.pieces():
                yield {"data": self._chunk(Delta(role="assistant", content=piece) if first else Delta(content=piece))}
                first = False
            yield {"data": self._chunk(Delta(), finish=True)}
            usage = self._account()
            options = self._body.stream_options
            if options is not None and options.include_usage:
                final = ChatCompletionChunk(id=self.id, created=self.created, model=self._body.model, choices=[], usage=usage)
                yield {"data": final.model_dump_json()}
            yield {"data": "[DONE]"}
        except UpstreamError as exc:
            error = upstream_error(exc)
            status = str(error.status)
            yield {"data": error.body().model_dump_json()}
        except BaseException:
            status = "499"  # the client went away; nginx's name for it
            raise
        finally:
            # Shielded: a cancelled stream must still close upstream and free its slot.
            with anyio.CancelScope(shield=True):
                await self._answer.aclose()
            metrics.active_streams.dec()
            self._finish(status)

    async def json_response(self) -> JSONResponse:
        status = "200"
        try:
            async for _ in self._answer.pieces():
                pass
        except UpstreamError as exc:
            error = upstream_error(exc)
            status = str(error.status)
            raise error from None
        finally:
            await self._answer.aclose()
            self._finish(status)
        completion = ChatCompletion(
            id=self.id, created=self.created, model=self._body.model,
            choices=[Choice(message=AssistantMessage(content=self._answer.text))],
            usage=self._account(),
        )
        return JSONResponse(completion.model_dump(), headers={"x-request-id": self.id})

    def _account(self) -> Usage:
        usage = estimate_usage(self._prompt, self._answer.text)
        metrics = self._runtime.metrics
        metrics.prompt_tokens.labels(self._body.model).inc(usage.prompt_tokens)
        metrics.completion_tokens.labels(self._body.model).inc(usage.completion_tokens)
        return usage

    def _finish(self, status: str) -> None:
        metrics = self._runtime.metrics
        stream_label = "true" if self._body.stream else "false"
        metrics.requests.labels(self._body.model, status, stream_label).inc()
        duration = time.monotonic() - self._started
        metrics.request_duration.labels(stream_label).observe(duration)
        log.info("chat completion finished", extra={
            "request_id": self.id, "model": self._body.model, "stream": self._body.stream, "status": status,
            "credential": self._answer.credential_id, "duration_ms": round(duration * 1000, 1),
        })
