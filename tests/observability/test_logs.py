"""Log formats: one JSON object per line with the structured fields and the trace of the span
current on the thread; the text format stays the familiar single line."""

from __future__ import annotations

import io
import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from saguaro.telemetry import tracing
from saguaro.telemetry.logs import TEXT_FORMAT, JsonFormatter, configure_logging


def capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.getLogger(f"saguaro.tests.logs.{id(stream)}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_lines_carry_fields_and_exceptions():
    logger, stream = capture(JsonFormatter())
    logger.info("request %s finished", "abc", extra={"fields": {"request_id": "abc", "completion_tokens": 7}})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("it failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "request abc finished" and first["level"] == "info"
    assert first["request_id"] == "abc" and first["completion_tokens"] == 7
    assert first["ts"].endswith("Z") and "trace_id" not in first
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


def test_json_lines_name_the_current_trace():
    exporter = InMemorySpanExporter()
    tracing.configure_tracing("saguaro-test", exporters=[exporter], batch=False)
    try:
        logger, stream = capture(JsonFormatter())
        with tracing.tracer().start_as_current_span("work") as span:
            logger.info("inside")
        entry = json.loads(stream.getvalue())
        assert (entry["trace_id"], entry["span_id"]) == tracing.trace_ids(span)
        assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    finally:
        tracing.shutdown_tracing()
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_text_format_and_unknown_format():
    logger, stream = capture(logging.Formatter(TEXT_FORMAT))
    logger.warning("plain %d", 3, extra={"fields": {"ignored": True}})
    assert stream.getvalue() == f"WARNING {logger.name}: plain 3\n"
    with pytest.raises(ValueError, match="text or json"):
        configure_logging("yaml")
