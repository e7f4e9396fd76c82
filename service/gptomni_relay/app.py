"""The FastAPI application: routes, error handlers, lifespan, instrumentation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from gptomni_relay import __version__
from gptomni_relay.openai_api import chat_route, models_route
from gptomni_relay.openai_api.errors import install_error_handlers
from gptomni_relay.openai_api.event_stream import SERVER_SEND_SCOPE_KEY
from gptomni_relay.settings import RelaySettings
from gptomni_relay.state import RelayState, build_state
from gptomni_relay.tracing import build_tracer_provider, incoming_trace_context


class RelayApp(FastAPI):
    """Leaves the server's own `send` in the scope for the streaming hot path (event_stream.py)
    and, when no server spans are recorded, keeps the caller's trace context for the logs."""

    records_server_spans = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        scope[SERVER_SEND_SCOPE_KEY] = send
        incoming = None if self.records_server_spans else incoming_trace_context(scope["headers"])
        token = None if incoming is None else otel_context.attach(incoming)
        try:
            await super().__call__(scope, receive, send)
        finally:
            if token is not None:
                otel_context.detach(token)
            # `send` is a method of the server's request object, which holds this scope:
            # left here, the pair would wait for the garbage collector (tests/test_no_cycles.py).
            del scope[SERVER_SEND_SCOPE_KEY]


def create_app(settings: RelaySettings | None = None, tracer_provider: TracerProvider | None = None) -> FastAPI:
    settings = settings or RelaySettings()
    provider = tracer_provider if tracer_provider is not None else build_tracer_provider("gptomni-relay")
    relay = build_state(settings, provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    app = RelayApp(title="gptomni relay", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.relay = relay
    install_error_handlers(app)
    app.router.routes.extend([chat_route.route, *models_route.routes])

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        relay: RelayState = request.app.state.relay
        statuses = [{"id": s.id, "health": s.health.value, "inFlight": s.in_flight} for s in relay.pool.statuses()]
        ready = relay.pool.is_ready()
        return JSONResponse({"ready": ready, "credentials": statuses}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        relay: RelayState = request.app.state.relay
        return Response(generate_latest(relay.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if provider is not None:
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"]
        )
        app.records_server_spans = True
    return app
