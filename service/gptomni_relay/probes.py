"""The routes a cluster asks, not a client: liveness, readiness and Prometheus metrics.

The public app answers /healthz and /readyz (the kubelet's probes may reach either port)
but never /metrics; the metrics app, on its own port that no Ingress routes, answers all
three. Readiness says ready or not and nothing more: per-credential health and load are
metrics, never something the public path lists.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gptomni_relay.state import RelayState

PROBE_METHODS = ["GET", "HEAD"]


async def healthz(_: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    relay: RelayState = request.app.state.relay
    ready = relay.pool.is_ready()
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


async def readyz_with_mode(request: Request) -> Response:
    """The metrics port's readiness also says which pool the relay runs on (local, shared,
    fallback): the cluster's business, not a client's."""
    relay: RelayState = request.app.state.relay
    ready = relay.pool.is_ready()
    return JSONResponse({"ready": ready, "pool": relay.pool.mode.value}, status_code=200 if ready else 503)


async def metrics(request: Request) -> Response:
    relay: RelayState = request.app.state.relay
    return Response(generate_latest(relay.metrics.registry), media_type=CONTENT_TYPE_LATEST)


probe_routes = [
    Route("/healthz", healthz, methods=PROBE_METHODS),
    Route("/readyz", readyz, methods=PROBE_METHODS),
]


def create_metrics_app(relay: RelayState) -> Starlette:
    app = Starlette(routes=[
        Route("/healthz", healthz, methods=PROBE_METHODS),
        Route("/readyz", readyz_with_mode, methods=PROBE_METHODS),
        Route("/metrics", metrics, methods=PROBE_METHODS),
    ])
    app.router.redirect_slashes = False
    app.state.relay = relay
    return app
