"""A stand-in for an OpenTelemetry collector, run as its own process by the tests:
`python -m tests.otlp_receiver PORT_FILE SPANS_FILE`.

It serves OTLP/HTTP traces (`POST /v1/traces`, protobuf, as the SDK's exporter sends
them) on a free loopback port, which it writes to PORT_FILE once listening, and appends
each span to SPANS_FILE as one JSON line in the shape a trace backend shows: hex ids,
the service name, the kind and status by name, attributes, events and resource
attributes as plain values.
"""

from __future__ import annotations

import http.server
import json
import sys
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

MAX_BODY = 16 * 1024 * 1024


def plain(value: AnyValue) -> Any:
    """An attribute value as a backend shows it (arrays and maps through their JSON form)."""
    kind = value.WhichOneof("value")
    if kind in ("array_value", "kvlist_value"):
        return MessageToDict(getattr(value, kind))
    return getattr(value, kind) if kind else None


def attributes(items: list[KeyValue]) -> dict[str, Any]:
    return {item.key: plain(item.value) for item in items}


def span_record(span: Span, resource: dict[str, Any], scope: str) -> dict[str, Any]:
    return {
        "service": resource.get("service.name"), "resource": resource, "scope": scope,
        "name": span.name, "kind": Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(), "parent_span_id": span.parent_span_id.hex(),
        "start_ns": span.start_time_unix_nano, "end_ns": span.end_time_unix_nano,
        "status": {"code": Status.StatusCode.Name(span.status.code).removeprefix("STATUS_CODE_"),
                   "message": span.status.message},
        "attributes": attributes(list(span.attributes)),
        "events": [{"name": event.name, "attributes": attributes(list(event.attributes))} for event in span.events],
    }


def handler_for(spans_file: Path) -> type[http.server.BaseHTTPRequestHandler]:
    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", "0"))
            if self.path != "/v1/traces" or not 0 < length <= MAX_BODY:
                self.send_error(404 if self.path != "/v1/traces" else 400)
                return
            request = ExportTraceServiceRequest()
            request.ParseFromString(self.rfile.read(length))
            lines = []
            for resource_spans in request.resource_spans:
                resource = attributes(list(resource_spans.resource.attributes))
                for scope_spans in resource_spans.scope_spans:
                    lines.extend(json.dumps(span_record(span, resource, scope_spans.scope.name))
                                 for span in scope_spans.spans)
            with spans_file.open("a", encoding="utf-8") as out:
                out.writelines(f"{line}\n" for line in lines)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Receiver


def main(argv: list[str]) -> None:
    port_file, spans_file = Path(argv[0]), Path(argv[1])
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler_for(spans_file))
    written = port_file.with_suffix(".part")
    written.write_text(str(server.server_address[1]))
    written.replace(port_file)  # whole or not at all for the test that waits for it
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
