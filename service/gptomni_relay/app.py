"""The FastAPI application: routes, error handlers, lifespan, instrumentation."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import Receive, Scope, Send

from gptomni_relay import __version__
from gptomni_relay.auth import require_api_key
from gptomni_relay.chat import route as chat_route
from gptomni_relay.errors import APIError, install_error_handlers
from gptomni_relay.event_stream import SERVER_SEND_SCOPE_KEY
from gptomni_relay.runtime import RelayRuntime, build_runtime
from gptomni_relay.schemas import Model, ModelList
from gptomni_relay.settings import RelaySettings
from gptomni_relay.tracing import build_tracer_provider, incoming_trace_context

_STARTED = int(time.time())


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
    runtime = build_runtime(settings, provider)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = RelayApp(title="gptomni relay", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runtime = runtime
    install_error_handlers(app)
    app.router.routes.append(chat_route)

    @app.get("/v1/models", dependencies=[Depends(require_api_key)])
    async def list_models() -> ModelList:
        return ModelList(data=[Model(id=model_id, created=_STARTED) for model_id in settings.models])

    @app.get("/v1/models/{model_id:path}", dependencies=[Depends(require_api_key)])
    async def get_model(model_id: str) -> Model:
        if model_id not in settings.models:
            raise APIError(404, f"The model '{model_id}' does not exist.", param="model", code="model_not_found")
        return Model(id=model_id, created=_STARTED)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> JSONResponse:
        rt: RelayRuntime = request.app.state.runtime
        statuses = [{"id": s.id, "health": s.health.value, "inFlight": s.in_flight} for s in rt.pool.statuses()]
        ready = rt.pool.is_ready()
        return JSONResponse({"ready": ready, "credentials": statuses}, status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        rt: RelayRuntime = request.app.state.runtime
        return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    if provider is not None:
        FastAPIInstrumentor.instrument_app(
            app, tracer_provider=provider, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"]
        )
        app.records_server_spans = True
    return app
