"""Structured logs for both programs: one JSON object per line, with the current trace id
so a log line leads to its trace; or readable text with the same fields.

Records may carry anything as `extra`: kopf attaches its own settings object (a dataclass
holding queues) to every record it logs. Such values must never cost the log line, so
they are rendered by `str`, and kopf's internal fields are left out altogether.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from opentelemetry import trace
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# Fields no reader wants: uvicorn's copy of a message with terminal colour codes, and
# kopf's internal per-record settings and flags (its object reference, k8s_ref, stays).
_DROPPED = frozenset({"color_message", "settings", "k8s_skip"})
_NOT_EXTRA = frozenset(RESERVED_ATTRS) | _DROPPED | {"message", "asctime", "taskName"}


class TraceContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


def _never_fails(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


class TextFormatter(logging.Formatter):
    """`time level logger message key=value ...`: the same fields as the JSON lines."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = " ".join(f"{key}={value}" for key, value in record.__dict__.items()
                          if key not in _NOT_EXTRA and not key.startswith("_"))
        return f"{line} {extras}" if extras else line


def make_formatter(fmt: str) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"levelname": "level"},
            reserved_attrs=[*RESERVED_ATTRS, *_DROPPED],
            json_default=_never_fails,
        )
    return TextFormatter("%(asctime)s %(levelname)s %(name)s %(message)s")


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContextFilter())
    handler.setFormatter(make_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
