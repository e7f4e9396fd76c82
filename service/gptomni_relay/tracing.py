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
from contextlib import AbstractContextManager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Status, StatusCode

from gptomni_common.upstream import Outcome, UpstreamError
from gptomni_relay.core.attempt_observer import AttemptObserver


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


class FailoverSpans:
    """A `gptomni.upstream` span per upstream attempt, a child of the request's span, with
    its credential, attempt number, time to first piece and outcome (a FailoverObserver,
    core/attempt_observer.py)."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def slot_waited(self, seconds: float) -> None:
        pass

    def failed_over(self) -> None:
        pass

    def attempt(self, credential_id: str, attempt: int) -> AttemptObserver:
        return _AttemptSpan(self._tracer.start_span(
            "gptomni.upstream", attributes={"gptomni.credential_id": credential_id, "gptomni.attempt": attempt}))


class _AttemptSpan:
    __slots__ = ("_span",)

    def __init__(self, span: Span) -> None:
        self._span = span

    def running(self) -> AbstractContextManager[object]:
        # Current while GPT-Omni is called: what is logged meanwhile carries the attempt's span.
        return trace.use_span(self._span, end_on_exit=False)

    def first_piece(self, after_seconds: float) -> None:
        self._span.set_attribute("gptomni.ttft_ms", round(after_seconds * 1000, 1))

    def succeeded(self) -> None:
        self._span.set_attribute("gptomni.outcome", Outcome.OK.value)

    def failed(self, error: UpstreamError, *, answer_started: bool) -> None:
        self._span.set_attribute("gptomni.outcome", error.outcome.value)
        self._span.set_status(Status(StatusCode.ERROR, error.message))

    def closed(self) -> None:
        self._span.end()
