"""grpc.health.v1 and server reflection on every gRPC server we run (saguaro/standard_services.py),
called with the standard stubs over real sockets: target, draft and gateway with tiny models.

* each server is SERVING when ready, under "", each service's name and ``saguaro.live``;
* reflection lists exactly what it serves, plus health and reflection;
* draining (``stop_serving``, what SIGTERM does) is NOT_SERVING at once on ``Watch``, while
  liveness stays SERVING; a target whose engine loop died is not live;
* a target decoding without its draft is ready (DEGRADED) but not ``saguaro.undegraded``;
* the gateway is NOT_SERVING until a target serves, follows its only target down and back up,
  and drains.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from saguaro.config import EngineConfig
from saguaro.net import free_port
from saguaro.services.draft.server import serve as serve_draft
from saguaro.services.gateway import GatewayConfig, GatewayThread
from saguaro.services.target.local import speculative_engine
from saguaro.services.target.server import serve_target
from saguaro.speculative.settings import DraftSettings
from saguaro.standard_services import LIVE_SERVICE, UNDEGRADED_SERVICE, stop_serving
from saguaro.tokenizer import load_tokenizer

SMALL = dict(kv_cache_bytes=16 << 20, max_num_seqs=8, show_progress=False)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
STANDARD = {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"}
TARGET_SERVICES = {"saguaro.v1.Inference", "saguaro.v1.TargetRouting"}


def check(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=30).status


def listed_services(address: str) -> set[str]:
    with grpc.insecure_channel(address) as channel:
        return set(ProtoReflectionDescriptorDatabase(channel).get_services())


class Watch:
    """A ``Health/Watch`` stream read on a thread: ``next()`` is the next status it received."""

    def __init__(self, address: str, service: str = ""):
        self.channel = grpc.insecure_channel(address)
        self.call = health_pb2_grpc.HealthStub(self.channel).Watch(health_pb2.HealthCheckRequest(service=service))
        self.statuses: queue.Queue[int | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.statuses.put(response.status)
        except grpc.RpcError:
            pass  # cancelled, or the server stopped
        self.statuses.put(None)  # the stream ended

    def next(self) -> int | None:
        return self.statuses.get(timeout=60)

    def until(self, status: int) -> list[int]:
        """Statuses up to ``status`` (raises if the stream ends first)."""
        seen = []
        while not seen or seen[-1] != status:
            seen.append(self.next())
            assert seen[-1] is not None, f"the stream ended before {status}: {seen}"
        return seen

    def rest(self) -> list[int]:
        """Every status until the stream ends."""
        seen = []
        while (status := self.next()) is not None:
            seen.append(status)
        return seen

    def close(self) -> None:
        self.call.cancel()
        self.channel.close()


@pytest.fixture
def watches() -> Iterator[Callable[..., Watch]]:
    opened: list[Watch] = []

    def watch(address: str, service: str = "") -> Watch:
        opened.append(Watch(address, service))
        return opened[-1]

    yield watch
    for opened_watch in opened:
        opened_watch.close()


def start_target(model_dir: str, mode: str = "ar", draft_address: str | None = None, address: str | None = None):
    engine = speculative_engine(EngineConfig(model=model_dir, **SMALL), mode, None, None, draft_address,
                                draft_soft_deadline=False)
    address = address or f"127.0.0.1:{free_port()}"
    server, loop = serve_target(engine, load_tokenizer(model_dir), address)
    return address, server, loop


# -- target ----------------------------------------------------------------------------------------
def test_target_serves_health_and_reflection_and_drains(model_dirs, watches):
    address, server, loop = start_target(model_dirs["llama"])
    try:
        for name in ("", *TARGET_SERVICES, LIVE_SERVICE, UNDEGRADED_SERVICE):
            assert check(address, name) == SERVING, name
        assert listed_services(address) == TARGET_SERVICES | STANDARD
        ready, live = watches(address), watches(address, LIVE_SERVICE)
        assert ready.next() == SERVING and live.next() == SERVING
        stop_serving(server, grace=1.0)
        assert ready.rest() == [NOT_SERVING], "draining: NOT_SERVING at once, then the stream ends"
        assert live.rest() == [], "a draining target is still alive"
    finally:
        server.stop(grace=None)
        loop.stop()


def test_a_target_whose_engine_loop_died_is_not_live(model_dirs, watches):
    address, server, loop = start_target(model_dirs["llama"])
    try:
        live = watches(address, LIVE_SERVICE)
        assert live.next() == SERVING
        loop.stop()
        assert live.next() == NOT_SERVING
        assert check(address) == NOT_SERVING
    finally:
        server.stop(grace=None)


def test_a_target_without_its_draft_is_ready_but_degraded(model_dirs):
    nowhere = f"127.0.0.1:{free_port()}"  # no draft ever listens here
    address, server, loop = start_target(model_dirs["llama"], "ssd", [nowhere])
    try:
        assert (check(address), check(address, LIVE_SERVICE)) == (SERVING, SERVING)
        assert check(address, UNDEGRADED_SERVICE) == NOT_SERVING
    finally:
        server.stop(grace=None)
        loop.stop()


# -- draft -----------------------------------------------------------------------------------------
def test_draft_serves_health_and_reflection_and_drains(model_dirs, watches):
    address = f"127.0.0.1:{free_port()}"
    server = serve_draft(EngineConfig(model=model_dirs["llama_draft_perturbed"], **SMALL), address,
                         DraftSettings(k=3, fan_out=2))
    try:
        for name in ("", "saguaro.v1.Speculation", LIVE_SERVICE, UNDEGRADED_SERVICE):
            assert check(address, name) == SERVING, name
        assert listed_services(address) == {"saguaro.v1.Speculation"} | STANDARD
        ready = watches(address)
        assert ready.next() == SERVING
        stop_serving(server, grace=1.0)
        assert ready.rest() == [NOT_SERVING]
    finally:
        server.stop(grace=None)


# -- gateway ---------------------------------------------------------------------------------------
def test_gateway_follows_its_only_target(model_dirs, watches):
    """NOT_SERVING until its target serves (the gateway is up before it can route), NOT_SERVING
    when that target goes away, SERVING when it is back; draining ends readiness, not liveness."""
    target_address = f"127.0.0.1:{free_port()}"
    gateway = GatewayThread(GatewayConfig(targets=[target_address], host="127.0.0.1", port=0, http_port=None,
                                          health_interval_s=0.1, breaker_cooldown_s=0.5)).start()
    target = None
    try:
        address = gateway.grpc_address
        assert (check(address), check(address, LIVE_SERVICE)) == (NOT_SERVING, SERVING)
        assert listed_services(address) == {"saguaro.v1.Inference"} | STANDARD
        ready = watches(address)
        assert ready.next() == NOT_SERVING
        target = start_target(model_dirs["llama"], address=target_address)
        assert ready.until(SERVING)[-1] == SERVING
        assert check(address, "saguaro.v1.Inference") == SERVING
        # the pod goes away; its replacement (already loaded) comes up on the same address
        replacement = speculative_engine(EngineConfig(model=model_dirs["llama"], **SMALL), "ar")
        _, server, loop = target
        server.stop(grace=None)
        loop.stop()
        target = None
        assert ready.until(NOT_SERVING)[-1] == NOT_SERVING
        target = (target_address, *serve_target(replacement, load_tokenizer(model_dirs["llama"]), target_address))
        assert ready.until(SERVING)[-1] == SERVING
        live = watches(address, LIVE_SERVICE)
        assert live.next() == SERVING
        gateway.call(gateway.gateway.drain)
        assert ready.next() == NOT_SERVING
        assert (check(address), check(address, LIVE_SERVICE)) == (NOT_SERVING, SERVING)
    finally:
        gateway.stop()
        if target is not None:
            target[1].stop(grace=None)
            target[2].stop()
