"""``/metrics`` (Prometheus text) and ``/healthz`` over plain HTTP, on a side port, and the one
place that decides what every Saguaro ``/metrics`` looks like (``exposition``).

Why a separate port and a tiny ``http.server`` rather than the gRPC port: Prometheus, the
Kubernetes probes and the Inference Extension's endpoint picker all speak HTTP, and the
services' public ports are gRPC. prometheus_client's own ``start_http_server`` would answer
every path with metrics; probes need a health answer with a status code.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from saguaro.errors import ConfigError

log = logging.getLogger(__name__)

# The label every series of every Saguaro service carries, with this constant value. Why
# ``inference_server``: it names what produced the series (Saguaro, not vLLM) and collides with
# nothing — vLLM's own labels are ``model_name`` and ``engine`` (its engine index), and no scrape
# configuration sets it, so Prometheus never renames it to ``exported_*``. Queries that select
# by metric name and aggregate (the endpoint picker, KEDA, vLLM's dashboards) are unaffected;
# ``{inference_server="saguaro"}`` tells our series from real vLLM pods (docs/observability.md).
SERVER_LABEL = "inference_server"
SERVER_NAME = "saguaro"
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED = frozenset({SERVER_LABEL, "model_name", "le", "quantile"})


def parse_metrics_labels(items: Iterable[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings (``--metrics-label``) as a dict, with a clear error for a bad one.

    Why process-exported labels at all: a series keeps the labels its process exports whatever
    the Prometheus scrape configuration, while pod labels reach a series only through that
    configuration's relabelling. The chart passes release, pool, namespace and pod this way so
    its KEDA triggers select this release's series under any scrape configuration.
    """
    labels: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ConfigError(f"--metrics-label {item!r}: expected NAME=VALUE with NAME a Prometheus label name "
                             "(letters, digits, underscores; not starting with a digit or '__')")
        if name in _RESERVED:
            raise ConfigError(f"--metrics-label {item!r}: {name} is set by Saguaro itself; choose another name")
        if name in labels:
            raise ConfigError(f"--metrics-label {name} given twice ({labels[name]!r} and {value!r})")
        labels[name] = value
    return labels


class _Exposed:
    """What a scrape sees of ``registry``: every sample with ``labels`` (and ``inference_server``)
    added, and no ``_created`` samples.

    Why drop ``_created`` here: prometheus_client adds a ``<name>_created`` series next to every
    counter and histogram child, which doubles the series count and which neither vLLM's nor
    our dashboards read. Filtering at exposition is one place for every service (target, draft,
    gateway) and, unlike ``disable_created_metrics()``, changes no process-wide state of a
    library other code in the process may use.
    """

    def __init__(self, registry: CollectorRegistry, labels: Mapping[str, str]):
        self.registry = registry
        self.labels = {SERVER_LABEL: SERVER_NAME, **labels}

    def collect(self) -> Iterator[Metric]:
        for family in self.registry.collect():
            samples = [s._replace(labels={**s.labels, **self.labels}) for s in family.samples
                       if not s.name.endswith("_created")]
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            copy.samples = samples
            yield copy


def exposition(registry: CollectorRegistry, labels: Mapping[str, str] | None = None) -> bytes:
    """The Prometheus text of ``registry`` as every Saguaro service serves it (``_Exposed``)."""
    return generate_latest(_Exposed(registry, labels or {}))  # type: ignore[arg-type]

DEFAULT_METRICS_PORT = 9400
Health = Callable[[], tuple[bool, str]]  # (healthy, message)


class MetricsServer:
    """Serves ``registry`` until ``stop``; ``health`` answers ``/healthz`` (200 or 503); every
    series carries ``labels`` (``--metrics-label``) and ``inference_server``."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0", health: Health | None = None,
                 labels: Mapping[str, str] | None = None):
        handler = _handler(registry, health or (lambda: (True, "ok")), dict(labels or {}))
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = host
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(registry: CollectorRegistry, health: Health, labels: dict[str, str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, exposition(registry, labels), CONTENT_TYPE_LATEST)
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
                         health: Health | None = None, labels: Mapping[str, str] | None = None) -> MetricsServer | None:
    """Start serving, or None when ``port`` is 0 (disabled) or taken.

    A taken port is logged, not fatal: metrics must never stop a model server from serving
    (several local services started with the default port would otherwise refuse to start).
    """
    if port == 0:
        return None
    try:
        server = MetricsServer(registry, port, host, health, labels)
    except OSError as exc:
        log.warning("metrics disabled: cannot listen on %s:%d (%s)", host, port, exc.strerror or exc)
        return None
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server
