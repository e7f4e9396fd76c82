"""POST /v1/chat/completions: the chat surface's reader and writer for the steps every
answering route shares (answering.py)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gptomni_relay.metrics import RelayMetrics
from gptomni_relay.openai_api.answering import Asked, answer
from gptomni_relay.openai_api.completion_writer import CompletionWriter
from gptomni_relay.openai_api.request_reading import answer_shape, conversation, parse_request
from gptomni_relay.settings import RelaySettings


class ChatSurface:
    log_message = "chat completion finished"
    conversation_param = "messages"

    def read(self, raw: bytes, settings: RelaySettings) -> Asked:
        body = parse_request(raw, settings)
        return Asked(settings.model_id(body.model), bool(body.stream), answer_shape(body), conversation(body), body)

    def writer(self, metrics: RelayMetrics, asked: Asked, prompt_tokens: int, started: float,
               api_key: str) -> CompletionWriter:
        return CompletionWriter(metrics, asked.body, prompt_tokens, started, api_key, asked.model)


_SURFACE = ChatSurface()


async def chat_completions(request: Request) -> Response:
    return await answer(request, _SURFACE)


# A plain Starlette route: the body is read and validated here (size limit first, then
# OpenAI-style errors), so FastAPI's parameter machinery would only add work per request.
route = Route("/v1/chat/completions", chat_completions, methods=["POST"])
