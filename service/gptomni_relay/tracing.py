"""OpenTelemetry set-up: a tracer provider per app when spans have somewhere to go.

The standard variables apply: OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
turn export on, OTEL_SERVICE_NAME names the service, OTEL_SDK_DISABLED=true turns it off.

With no exporter the relay records no spans at all: the server instrumentation costs about
1 ms of CPU per request, half of what a request costs (docs/performance.md), and spans
nobody exports are that cost for nothing. An incoming `traceparent` still reaches the
logs (see `incoming_trace_context`), so log lines stay joinable with the caller's trace.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def otlp_endpoint_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def build_tracer_provider(default_service_name: str) -> TracerProvider | None:
    """An OTLP-exporting provider, or None when tracing is off (no endpoint, or disabled)."""
    if not otlp_endpoint_configured() or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    service_name = os.environ.get("OTEL_SERVICE_NAME", default_service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def incoming_trace_context(headers: Iterable[tuple[bytes, bytes]]) -> Context | None:
    """The caller's trace context from a `traceparent` header, for when no server span is made."""
    carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers
               if name in (b"traceparent", b"tracestate")}
    return propagate.extract(carrier) if "traceparent" in carrier else None
