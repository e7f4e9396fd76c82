"""The FastAPI application: routes, error handlers, lifespan, instrumentation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from starlette.types import Receive, Scope, Send

from gptomni_relay import __version__
from gptomni_relay.edge.raw_send import expose_server_send, withdraw_server_send
from gptomni_relay.openai_api import chat_route, completions_route, models_route, responses_route
from gptomni_relay.openai_api.admission import KeyAdmissionMiddleware
from gptomni_relay.openai_api.errors import install_error_handlers
from gptomni_relay.probes import probe_routes
from gptomni_relay.settings import RelaySettings
from gptomni_relay.state import build_state
from gptomni_relay.tracing import build_tracer_provider, incoming_trace_context


class RelayApp(FastAPI):
    """Leaves the server's own `send` in the scope for the streaming hot path (edge/raw_send.py)
    and, when no server spans are recorded, keeps the caller's trace context for the logs."""

    records_server_spans = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        expose_server_send(scope, send)
        incoming = None if self.records_server_spans else incoming_trace_context(scope["headers"])
        token = None if incoming is None else otel_context.attach(incoming)
        try:
            await super().__call__(scope, receive, send)
        finally:
            if token is not None:
                otel_context.detach(token)
            withdraw_server_send(scope)


def create_app(settings: RelaySettings | None = None, tracer_provider: TracerProvider | None = None,
               clock: Callable[[], float] = time.monotonic) -> FastAPI:
    settings = settings or RelaySettings()
    provider = tracer_provider if tracer_provider is not None else build_tracer_provider("gptomni-relay")
    relay = build_state(settings, provider, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    # The public app: nothing but the API and the probes. No schema or docs to browse,
    # and no redirects, whose Location would be built from the client's Host header.
    app = RelayApp(title="gptomni relay", version=__version__, lifespan=lifespan,
                   openapi_url=None, docs_url=None, redoc_url=None, redirect_slashes=False)
    app.state.relay = relay
    install_error_handlers(app)
    app.add_middleware(KeyAdmissionMiddleware)
    if settings.cors_origins:
        # Outermost but for tracing: preflights are answered before authentication (a
        # browser sends them without the Authorization header), and every answer, errors
        # included, carries the CORS headers the browser needs to read it.
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           # Whatever the preflight asks for (authorization, the SDKs' x-stainless-*):
                           # the origin is what is restricted, and no cookie is ever accepted.
                           allow_headers=["*"],
                           expose_headers=["x-request-id", "retry-after", "x-ratelimit-limit-requests",
                                           "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
                                           "x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens",
                                           "x-ratelimit-reset-tokens"],
                           max_age=600)
    app.router.routes.extend([chat_route.route, completions_route.route, responses_route.route, *models_route.routes, *probe_routes])

    if provider is not None:
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=provider, excluded_urls="healthz,readyz", exclude_spans=["receive", "send"]
        )
        app.records_server_spans = True
    return app
