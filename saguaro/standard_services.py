"""The standard gRPC services every Saguaro server adds: ``grpc.health.v1.Health`` and reflection.

Kubelet ``grpc:`` probes, ``grpc_health_probe``, meshes and load balancers speak
``grpc.health.v1``; ``grpcurl`` and ``grpc_cli`` read a server's API off reflection. The target,
the draft and the gateway each wire them here, so that the statuses mean the same on all three
(docs/deploy.md, "Probes"). Health names a server reports:

* ``""`` (the whole server) and the full name of every service it serves: SERVING while it takes
  new requests (readiness). NOT_SERVING while it is not ready (a gateway with no serving target)
  and, for good, once it drains (``drain``: SIGTERM).
* ``saguaro.live`` (``LIVE_SERVICE``): SERVING while the process serves at all, busy or draining
  (liveness: a restart would not help); NOT_SERVING when its work loop died.
* ``saguaro.undegraded`` (``UNDEGRADED_SERVICE``): SERVING while it takes requests and is not
  degraded (a target decoding without its draft): readiness for a release that keeps degraded
  pods out of rotation (``target.readyWhenDegraded=false``).

Each server keeps its own rule of what state it is in (``Serving``; the target's is
services/target/health.py); this module only maps a state to statuses and publishes the ones
that changed, so that ``Watch`` streams see every transition. The state is polled
(``POLL_INTERVAL_S``): the rules read a few attributes, and polling needs no hook in the engine.

The health servicer is registered with its generated code, not ``saguaro.rpc_services.add_service``:
on a sync server grpcio serves the standard ``Watch`` without a worker thread per stream only
that way, and watchers must not be able to take the threads that answer the probes.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc
import grpc.aio
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

LIVE_SERVICE = "saguaro.live"
UNDEGRADED_SERVICE = "saguaro.undegraded"
POLL_INTERVAL_S = 0.25  # how soon Watch streams hear of a change
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# the health of each sync server, for ``stop_serving``: a SIGTERM handler holds only the server
_HEALTH: weakref.WeakKeyDictionary[grpc.Server, ServerHealth] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Serving:
    """A server's state, as its own health rule decides it."""

    live: bool  # the process serves RPCs (its work loop runs)
    ready: bool  # it takes new requests
    degraded: bool = False  # ready, but not as it should be (a target without its draft)


def health_statuses(state: Serving, services: Iterable[str], draining: bool) -> dict[str, int]:
    """Health name -> grpc.health.v1 status for ``state`` (see the module docstring)."""
    ready = state.ready and not draining
    statuses = {name: SERVING if ready else NOT_SERVING for name in ("", *services)}
    statuses[LIVE_SERVICE] = SERVING if state.live else NOT_SERVING
    statuses[UNDEGRADED_SERVICE] = SERVING if ready and not state.degraded else NOT_SERVING
    return statuses


class _Published:
    """What a servicer was last told, so that only changes are set (a Watch sees each once)."""

    def __init__(self, services: Iterable[ServiceDescriptor], state: Callable[[], Serving]):
        self.names = [service.full_name for service in services]
        self.state = state
        self.draining = False
        self._last: dict[str, int] = {}

    def changes(self) -> dict[str, int]:
        now = health_statuses(self.state(), self.names, self.draining)
        changed = {name: status for name, status in now.items() if self._last.get(name) != status}
        self._last = now
        return changed


def _register(server: grpc.Server | grpc.aio.Server, servicer: health_pb2_grpc.HealthServicer,
              names: Iterable[str]) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)


class ServerHealth:
    """Health and reflection on a sync ``grpc.Server``; ``follow`` keeps the statuses current.

    ``services``: the descriptors of what the server serves (reflection lists them, and each
    gets a health status); ``state``: the server's health rule, called from a watcher thread."""

    def __init__(self, server: grpc.Server, services: Iterable[ServiceDescriptor], state: Callable[[], Serving]):
        self._servicer = health.HealthServicer()
        self._published = _Published(services, state)
        self._lock = threading.RLock()  # the watcher thread and a SIGTERM handler both refresh
        _register(server, self._servicer, self._published.names)
        self.refresh()  # before the server starts: no moment with the servicer's default SERVING
        _HEALTH[server] = self

    def refresh(self) -> None:
        with self._lock:
            for name, status in self._published.changes().items():
                self._servicer.set(name, status)

    def drain(self) -> None:
        """NOT_SERVING from now on (liveness aside): call when the server starts to shut down."""
        with self._lock:
            self._published.draining = True
            self.refresh()

    def follow(self, server: grpc.Server, interval: float = POLL_INTERVAL_S) -> threading.Thread:
        """Refresh every ``interval`` seconds until ``server`` (started) terminates."""

        def run() -> None:
            while server.wait_for_termination(interval):  # True: timed out, still serving
                self.refresh()

        thread = threading.Thread(target=run, name="grpc-health", daemon=True)
        thread.start()
        return thread


def stop_serving(server: grpc.Server, grace: float | None) -> threading.Event:
    """Drain ``server``'s health (NOT_SERVING, which open ``Watch`` streams hear at once), then
    stop it, letting RPCs in flight finish within ``grace`` seconds: what SIGTERM does."""
    health_of_server = _HEALTH.get(server)
    if health_of_server is not None:
        health_of_server.drain()
    return server.stop(grace)


class AsyncServerHealth:
    """Health and reflection on a ``grpc.aio.Server``: ``ServerHealth`` for an event loop.

    Construct it before the server starts, then ``await refresh()`` (the servicer answers
    SERVING for "" until told otherwise) and ``follow()``."""

    def __init__(self, server: grpc.aio.Server, services: Iterable[ServiceDescriptor], state: Callable[[], Serving]):
        self._servicer = health.aio.HealthServicer()
        self._published = _Published(services, state)
        _register(server, self._servicer, self._published.names)

    async def refresh(self) -> None:
        for name, status in self._published.changes().items():
            await self._servicer.set(name, status)

    async def drain(self) -> None:
        """NOT_SERVING from now on (liveness aside): call when the server starts to shut down."""
        self._published.draining = True
        await self.refresh()

    def follow(self, interval: float = POLL_INTERVAL_S) -> asyncio.Task:
        """Refresh every ``interval`` seconds on the running loop, until the task is cancelled."""

        async def run() -> None:
            while True:
                await asyncio.sleep(interval)
                await self.refresh()

        return asyncio.get_running_loop().create_task(run(), name="grpc-health")
