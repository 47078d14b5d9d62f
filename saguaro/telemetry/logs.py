"""Logging setup: the familiar text lines, or one JSON object per line (``--log-format json``).

Why JSON: log pipelines (Loki, Elasticsearch, Cloud Logging) index fields, and a ``trace_id``
field is what lets Grafana jump from a log line to its trace. Structured fields travel on the
record as ``extra={"fields": {...}}``; the text format ignores them (the message already says
it all), the JSON format merges them into the object.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

TEXT_FORMAT = "%(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", [trace_id, span_id], ...fields, [exc]}`` per record."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if "trace_id" not in out:
            trace_id, span_id = _current_trace_ids()
            if trace_id:
                out["trace_id"], out["span_id"] = trace_id, span_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


def _current_trace_ids() -> tuple[str, str]:
    """Trace of the span current on this thread, when tracing is on."""
    from saguaro.telemetry import tracing

    if not tracing.enabled():
        return "", ""
    from opentelemetry import trace

    return tracing.trace_ids(trace.get_current_span())


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not when the handler was
    made: a process that swaps stderr (a test harness capturing output, a daemonizing wrapper)
    never leaves logging writing to a closed stream."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def configure_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    """Root logging for a service process (replaces handlers set up earlier)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}; use text or json")
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
