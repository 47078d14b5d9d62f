"""``/metrics`` (Prometheus text) and ``/healthz`` over plain HTTP, on a side port.

Why a separate port and a tiny ``http.server`` rather than the gRPC port: Prometheus, the
Kubernetes probes and the Inference Extension's endpoint picker all speak HTTP, and the
services' public ports are gRPC. prometheus_client's own ``start_http_server`` would answer
every path with metrics; probes need a health answer with a status code.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

DEFAULT_METRICS_PORT = 9400
Health = Callable[[], tuple[bool, str]]  # (healthy, message)


class MetricsServer:
    """Serves ``registry`` until ``stop``; ``health`` answers ``/healthz`` (200 or 503)."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0", health: Health | None = None):
        handler = _handler(registry, health or (lambda: (True, "ok")))
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(registry: CollectorRegistry, health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/health"):
                ok, message = health()
                self._send(200 if ok else 503, (message + "\n").encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # scrapes every few seconds: not news
            log.debug("metrics http: " + format, *args)

    return Handler


def start_metrics_server(registry: CollectorRegistry, port: int, host: str = "0.0.0.0",
                         health: Health | None = None) -> MetricsServer | None:
    """Start serving, or None when ``port`` is 0 (disabled) or taken.

    A taken port is logged, not fatal: metrics must never stop a model server from serving
    (several local services started with the default port would otherwise refuse to start).
    """
    if port == 0:
        return None
    try:
        server = MetricsServer(registry, port, host, health)
    except OSError as exc:
        log.warning("metrics disabled: cannot listen on %s:%d (%s)", host, port, exc.strerror or exc)
        return None
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server
