"""Gateway fixtures: real target services (in this process or as `saguaro target` children),
real draft processes, a real redis-server, and gateways on free loopback ports."""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest

from saguaro import LLM, SamplingParams
from saguaro.net import free_port
from saguaro.client import Client
from saguaro.config import EngineConfig
from saguaro.services.draft.server import serve
from saguaro.services.gateway import GatewayConfig, GatewayThread
from saguaro.services.target.local import speculative_engine
from saguaro.services.target.loop import EngineLoop
from saguaro.services.target.server import serve_target
from saguaro.speculative.settings import DraftSettings
from saguaro.tokenizer import load_tokenizer
from tests_support import RedisServer

SMALL = dict(kv_cache_bytes=16 << 20, max_num_seqs=8, show_progress=False)
ENV = dict(os.environ, OMP_NUM_THREADS="1")
# Fast health polling and short breaker cooldowns make the tests react quickly.
TEST_GATEWAY = dict(host="127.0.0.1", port=0, http_port=0, health_interval_s=0.1, breaker_cooldown_s=0.5)


@dataclass
class Target:
    """A target service in this process (its engine loop is inspectable)."""

    address: str
    server: grpc.Server
    loop: EngineLoop
    client: Client

    def close(self) -> None:
        self.client.close()
        self.server.stop(grace=None)
        self.loop.stop()


def _start_target(model_dir: str, mode: str = "ar", draft_address: str | None = None, address: str | None = None,
                  draft_model: str | None = None, **engine) -> Target:
    """``draft_model``: an in-process draft (mode sd) instead of a draft service's address."""
    config = EngineConfig(model=model_dir, **{**SMALL, **engine})
    draft = EngineConfig(model=draft_model, **SMALL) if draft_model is not None else None
    target_engine = speculative_engine(config, mode, draft, None, draft_address)
    address = address or f"127.0.0.1:{free_port()}"
    server, loop = serve_target(target_engine, load_tokenizer(model_dir), address,
                                draft_model_name=os.path.basename(model_dir))
    return Target(address, server, loop, Client(address, timeout=120))


def _wired_target(model_dir: str, service_class=None, credentials: grpc.ServerCredentials | None = None):
    """An AR target wired by hand like ``serve_target`` (a TLS port, or an ``InferenceService``
    subclass that records what it receives). Returns (address, stop, service)."""
    from concurrent import futures
    import threading

    from saguaro.services.target.api import InferenceService
    from saguaro.services.target.kv_events import KvEventHub, TargetRoutingService
    from saguaro.v1 import inference_pb2_grpc as pb_grpc
    from saguaro.v1 import routing_pb2_grpc as rpb_grpc

    engine = speculative_engine(EngineConfig(model=model_dir, **SMALL), "ar")
    hub = KvEventHub(engine.runner.blocks.block_size)
    engine.runner.blocks.listener = hub
    loop = EngineLoop(engine).start()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    service = (service_class or InferenceService)(loop, load_tokenizer(model_dir))
    pb_grpc.add_InferenceServicer_to_server(service, server)
    rpb_grpc.add_TargetRoutingServicer_to_server(TargetRoutingService(hub, service.tokenizer, threading.Lock()), server)
    address = f"127.0.0.1:{free_port()}"
    if credentials is None:
        server.add_insecure_port(address)
    else:
        server.add_secure_port(address, credentials)
    server.start()

    def stop() -> None:
        server.stop(grace=None)
        loop.stop()

    return address, stop, service


@pytest.fixture
def wired_target():
    """wired_target(model_dir, service_class=None, credentials=None) -> (address, service); stopped after."""
    stops = []

    def start(model_dir: str, service_class=None, credentials=None):
        address, stop, service = _wired_target(model_dir, service_class, credentials)
        stops.append(stop)
        return address, service

    yield start
    for stop in stops:
        stop()


class Child:
    """A `saguaro ...` child process; ready once its gRPC port accepts connections."""

    def __init__(self, args: list[str], address: str, log_path):
        self.address = address
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "saguaro.cli", *args], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=ENV)

    def wait_ready(self, timeout: float = 120) -> "Child":
        with grpc.insecure_channel(self.address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=timeout)
            except grpc.FutureTimeoutError:
                self.stop()
                raise RuntimeError(f"{self.address} did not start; see {self.log_path}") from None
        return self

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.kill()
        self.log.close()


def _start_draft(model_dir: str, log_path) -> Child:
    port = free_port()
    return Child(["draft", "--model", model_dir, "--port", str(port), "--metrics-port", "0",
                  "--kv-cache-bytes", str(16 << 20), "--max-num-seqs", "8"], f"127.0.0.1:{port}", log_path)


class _Started:
    """Calls ``start`` and closes everything it started at the end of the fixture's scope."""

    def __init__(self, start: Callable, close: Callable):
        self._start, self._close, self.items = start, close, []

    def __call__(self, *args, **kwargs):
        self.items.append(self._start(*args, **kwargs))
        return self.items[-1]

    def close_all(self) -> None:
        for item in reversed(self.items):
            self._close(item)


@pytest.fixture
def targets():
    """targets(model_dir, mode="ar", draft_address=None, address=None, draft_model=None, **EngineConfig fields)
    -> Target here."""
    started = _Started(_start_target, Target.close)
    yield started
    started.close_all()


@pytest.fixture(scope="module")
def module_targets():
    started = _Started(_start_target, Target.close)
    yield started
    started.close_all()


@pytest.fixture(scope="module")
def module_drafts(tmp_path_factory):
    """module_drafts(model_dir) -> a ready `saguaro draft` process, killed at the module's end."""
    logs = tmp_path_factory.mktemp("drafts")
    started = _Started(lambda model_dir: _start_draft(model_dir, logs / f"draft{len(started.items)}.log").wait_ready(),
                       Child.stop)
    yield started
    started.close_all()


def _serve_draft(model_dir: str):
    """An in-process draft service (K=3, F=2) on a free port: (server, address)."""
    address = f"127.0.0.1:{free_port()}"
    config = EngineConfig(model=model_dir, block_size=8, kv_cache_bytes=1 << 24, max_model_len=1024,
                          show_progress=False)
    return serve(config, address, DraftSettings(k=3, fan_out=2)), address


@pytest.fixture(scope="module")
def module_draft_services():
    """module_draft_services(model_dir) -> the address of an in-process draft service, stopped at
    the module's end (cheaper than a `saguaro draft` process where the test needs no process)."""
    started = _Started(_serve_draft, lambda served: served[0].stop(None))
    yield lambda model_dir: started(model_dir)[1]
    started.close_all()


@pytest.fixture
def children(tmp_path):
    """children(saguaro_args, address) -> Child (a `saguaro ...` process), killed after the test."""
    started = _Started(lambda args, address: Child(args, address, tmp_path / f"child-{address.replace(':', '-')}.log"),
                       Child.stop)
    yield started
    started.close_all()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


class Gateways:
    """Starts gateways on free ports (ready to route) and stops them all at the end."""

    def __init__(self):
        self.started: list[GatewayThread] = []

    def __call__(self, targets: list[str], wait: bool = True, **config) -> GatewayThread:
        gateway = GatewayThread(GatewayConfig(targets=targets, **{**TEST_GATEWAY, **config})).start()
        self.started.append(gateway)
        if wait:
            wait_routing_ready(gateway, len(targets))
        return gateway

    def stop_all(self) -> None:
        for gateway in self.started:
            gateway.stop()


@pytest.fixture
def start_gateway():
    """start_gateway(targets, wait=True, **GatewayConfig fields) -> a GatewayThread (stopped after the test)."""
    gateways = Gateways()
    yield gateways
    gateways.stop_all()


@pytest.fixture(scope="module")
def start_module_gateway():
    """Like start_gateway, for gateways shared by a module's tests."""
    gateways = Gateways()
    yield gateways
    gateways.stop_all()


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(scope="session")
def wait_until():
    """wait_until(condition, timeout=30, what=...): poll until true (no timing assertions: a bound only)."""
    return _wait_until


def wait_routing_ready(gateway: GatewayThread, healthy: int) -> None:
    """Ready, with ``healthy`` targets healthy and (prefix policy) their KV instances known."""
    gw = gateway.gateway

    def ready() -> bool:
        targets = [t for t in gw.pool.targets.values() if t.healthy]
        known = gw.config.policy != "prefix" or all(t.instance_id for t in targets)
        return gw.ready and len(targets) >= healthy and known

    _wait_until(lambda: gateway.call(ready), what="the gateway to route to its targets")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    lines: list[str] = field(default_factory=list)  # server-sent events: the "data: " payloads

    def json(self):
        return json.loads(self.body)

    def events(self) -> list:
        return [p if p == "[DONE]" else json.loads(p) for p in self.lines]


def _http(url: str, body=None, headers: dict | None = None, method: str | None = None, raw: bytes | None = None,
          context: ssl.SSLContext | None = None, timeout: float = 60) -> Reply:
    """One HTTP request (urllib, no client library between the test and the gateway)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout, context=context)
    except urllib.error.HTTPError as error:
        response = error
    with response:
        payload = response.read()
        reply = Reply(response.status, {k.lower(): v for k, v in response.headers.items()}, payload)
    if reply.headers.get("content-type", "").startswith("text/event-stream"):
        reply.lines = [line[len("data: "):] for line in payload.decode().splitlines() if line.startswith("data: ")]
    return reply


@pytest.fixture(scope="session")
def http():
    """http(url, body=None, headers=None, method=None, raw=None, context=None) -> Reply."""
    return _http


def _metric(gateway: GatewayThread | str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    base = gateway if isinstance(gateway, str) else gateway.http_url
    text = _http(base + "/metrics", context=ssl._create_unverified_context()).body.decode()
    total, found = 0.0, False
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total, found = total + sample.value, True
    return total if found else 0.0


@pytest.fixture(scope="session")
def metric():
    """metric(gateway or its HTTP base URL, sample_name, **labels) -> the sum of the matching samples (0: none)."""
    return _metric


@pytest.fixture(scope="session")
def reference(model_dirs):
    """Greedy tokens of target-only decoding (the in-process AR engine)."""
    llm = LLM(model_dirs["llama"], **SMALL)

    def generate(prompts: list, max_tokens: int) -> list[list[int]]:
        return [o.token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=max_tokens))]

    generate.tokenizer = llm.tokenizer
    return generate


@pytest.fixture(scope="session")
def ssd_pairs(model_dirs, tmp_path_factory):
    """Two target+draft pairs (SSD): draft services as child processes, targets in this process."""
    logs = tmp_path_factory.mktemp("drafts")
    drafts = [_start_draft(model_dirs["llama_draft_perturbed"], logs / f"draft{i}.log") for i in range(2)]
    targets = []
    try:
        for draft in drafts:
            draft.wait_ready()
        targets = [_start_target(model_dirs["llama"], "ssd", draft.address) for draft in drafts]
        for target in targets:
            target.client.wait_until_ready(60)
        yield targets
    finally:
        for target in targets:
            target.close()
        for draft in drafts:
            draft.stop()
