"""The gateway process: wires discovery, targets, index, router and the two fronts together.

Everything runs on one asyncio event loop (gRPC via ``grpc.aio``, HTTP via aiohttp, Redis via
``redis.asyncio``); only the Kubernetes watch has a thread, which hands address sets to the loop.
``Gateway`` is the object (``await start()`` / ``await stop()``); ``GatewayThread`` runs one on
a background thread (tests, benchmarks); ``run_gateway`` is ``saguaro gateway``.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from pathlib import Path

import grpc
from aiohttp import web

from saguaro.errors import ConfigError
from saguaro.rpc_services import add_service
from saguaro.services.gateway.admission import Admission, StreamLimit
from saguaro.services.gateway.auth import ApiKeys
from saguaro.services.gateway.config import GatewayConfig
from saguaro.services.gateway.discovery import KubernetesDiscovery
from saguaro.services.gateway.dispatch import Dispatcher
from saguaro.services.gateway.errors import GatewayError
from saguaro.services.gateway.generation_defaults import GenerationDefaults, resolve
from saguaro.services.gateway.grpc_api import GatewayInferenceService
from saguaro.services.gateway.http_api import HttpRunner, OpenAIApi
from saguaro.services.gateway.kv_watch import KvWatcher
from saguaro.services.gateway.metrics import GatewayMetrics
from saguaro.services.gateway.prefix_index import MemoryPrefixIndex, PrefixIndex
from saguaro.services.gateway.prepare import ModelFacts, Preparer
from saguaro.services.gateway.routing import make_router
from saguaro.services.gateway.targets import Target, TargetPool
from saguaro.services.gateway.tokenization import GatewayTokenizer
from saguaro.standard_services import AsyncServerHealth, Serving
from saguaro.telemetry.tracing import configure_tracing, shutdown_tracing
from saguaro.tls import channel_credentials, http_ssl_context, server_credentials
from saguaro.v1 import inference_pb2 as pb

log = logging.getLogger(__name__)
AIOHTTP_LINGERING_S = 10.0  # aiohttp's default lingering time (RequestHandler.lingering_time)


class Gateway:
    def __init__(self, config: GatewayConfig):
        config.validate()
        self.config = config
        self.metrics = GatewayMetrics(config.metrics_labels)
        self.api_keys = ApiKeys(config.api_keys)
        self.streams = StreamLimit(config.max_streams_per_key, config.retry_after_s)
        self.index: PrefixIndex | None = None
        self.pool: TargetPool | None = None
        self.dispatcher: Dispatcher | None = None
        self._preparer: Preparer | None = None
        self._grpc_server: grpc.aio.Server | None = None
        self._http_runner: web.AppRunner | None = None
        self._discovery: KubernetesDiscovery | None = None
        self._bootstrap: asyncio.Task | None = None
        self._health: AsyncServerHealth | None = None  # grpc.health.v1 (saguaro/standard_services.py)
        self._health_task: asyncio.Task | None = None
        self.grpc_port = 0
        self.http_port: int | None = None
        self.started_at = int(time.time())
        self._chat_template = _read_chat_template(config.chat_template)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        config = self.config
        if config.policy == "prefix":
            self.index = self._make_index()
        credentials = channel_credentials(config.target_tls_ca, config.target_tls_cert, config.target_tls_key, "target")
        watchers = [self._start_kv_watch] if self.index is not None else []
        self.pool = TargetPool(config, self.metrics, credentials, watchers)
        if self.index is not None:
            self.pool.on_removed.append(self._forget_target)
        router = make_router(config.policy, self.index, self.metrics, lambda: self.model_name)
        admission = Admission(config.max_queue, config.retry_after_s, self.metrics)
        self.dispatcher = Dispatcher(config, self.pool, router, self.index, admission, self.metrics)
        try:
            await self._serve_grpc()
            await self._serve_http()
            self._start_discovery()
        except BaseException:
            await self.stop()  # e.g. the HTTP port is taken: release the gRPC one too
            raise
        self._bootstrap = asyncio.get_running_loop().create_task(self._learn_model())

    def _make_index(self) -> PrefixIndex:
        config = self.config
        if not config.redis_url:
            return MemoryPrefixIndex(config.provisional_ttl_s)
        from saguaro.services.gateway.redis_index import RedisPrefixIndex

        index = RedisPrefixIndex(config.redis_url, namespace=config.model_name or "default",
                                 provisional_ttl_s=config.provisional_ttl_s, index_ttl_s=config.index_ttl_s,
                                 on_availability=lambda up: self.metrics.index_available.labels("redis").set(int(up)))
        self.metrics.index_available.labels("redis").set(1)
        return index

    def _forget_target(self, target: Target) -> None:
        if target.instance_id is not None:
            self.index.forget(target.instance_id)

    def _start_kv_watch(self, target: Target) -> asyncio.Task:
        watcher = KvWatcher(target, self.index, self.config.block_size, self.metrics)
        return asyncio.get_running_loop().create_task(watcher.run(), name=f"kv-events {target.address}")

    async def _serve_grpc(self) -> None:
        config = self.config
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
        inference = pb.DESCRIPTOR.services_by_name["Inference"]
        add_service(server, inference, GatewayInferenceService(self))
        health = AsyncServerHealth(server, (inference,), self.serving)
        await health.refresh()  # NOT_SERVING until a target serves
        address = f"{config.host}:{config.port}"
        try:
            if config.tls_cert:
                port = server.add_secure_port(address, server_credentials(config.tls_cert, config.tls_key))
            else:
                port = server.add_insecure_port(address)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError(f"cannot listen on {address} (gRPC): the address is in use or invalid")
        await server.start()
        self._grpc_server, self.grpc_port = server, port
        self._health, self._health_task = health, health.follow()

    async def _serve_http(self) -> None:
        config = self.config
        if config.http_port is None:
            return
        # aiohttp's keep-alive timer runs from the connection's start until a request head is
        # complete, and again after each response: it is the header read timeout. After a refusal
        # that left a body unread, aiohttp drains the rest before closing (so the client reads the
        # answer, not a reset) for up to its lingering time, 10 s: never longer than a body may
        # take to arrive, or a refused slow body would hold its connection (and a shutdown) longer
        runner = HttpRunner(OpenAIApi(self).app(), handler_cancellation=True, access_log=None,
                            keepalive_timeout=config.http_header_timeout_s,
                            lingering_time=min(AIOHTTP_LINGERING_S, config.http_body_timeout_s))
        await runner.setup()
        ssl_context = http_ssl_context(config.tls_cert, config.tls_key) if config.tls_cert else None
        site = web.TCPSite(runner, config.host, config.http_port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {config.host}:{config.http_port} (HTTP): {exc.strerror}") from None
        self._http_runner = runner
        self.http_port = runner.addresses[0][1]

    def _start_discovery(self) -> None:
        config = self.config
        if config.discovery == "static":
            self.pool.set_addresses(config.targets)
            return
        loop = asyncio.get_running_loop()
        self._discovery = KubernetesDiscovery(
            config.namespace, config.service, config.target_port,
            publish=lambda addresses: loop.call_soon_threadsafe(self.pool.set_addresses, addresses))
        self._discovery.start()

    async def _learn_model(self) -> None:
        """Once a target is healthy: its model facts and tokenizer (needed before serving)."""
        while self._preparer is None:
            target = next((t for t in self.pool.targets.values() if t.healthy), None)
            if target is None:
                self.pool.changed.clear()
                await self.pool.changed.wait()
                continue
            try:
                tokenizer = await GatewayTokenizer.fetch(target.routing, self._chat_template)
            except grpc.aio.AioRpcError as exc:
                log.warning("cannot fetch the tokenizer from %s (%s); retrying", target.address, exc.details())
                await asyncio.sleep(1.0)
                continue
            info = target.model_info
            facts = ModelFacts(self.config.model_name or info.model_name, info.max_model_len, info.vocab_size,
                               tuple(self.config.model_aliases), info.decode_mode)
            defaults = self._generation_defaults(info.generation_config)
            self._preparer = Preparer(facts, tokenizer, self.config.block_size, self.config.max_prefix_blocks,
                                      defaults)
            log.info("serving model %r (context %d tokens, tokenizer %s) from %s", facts.name, facts.max_model_len,
                     "fetched" if tokenizer.available else "absent: token-id prompts only", target.address)
            log.info("sampling defaults of the OpenAI API (from %s): %s", defaults.source,
                     defaults.describe() or "none (OpenAI's)")

    def _generation_defaults(self, served: str) -> GenerationDefaults:
        """``--generation-config``'s defaults; a served file that cannot be read applies none (and
        says so) rather than leave the gateway without a model."""
        try:
            return resolve(self.config.generation_config, served)
        except ConfigError as exc:
            log.error("no sampling defaults: %s", exc)
            return GenerationDefaults(source=f"none ({exc})")

    async def drain(self) -> None:
        """Report NOT_SERVING on grpc.health.v1 from now on (open Watch streams hear it at once):
        the first step of ``stop``, and of nothing else."""
        if self._health is not None:
            await self._health.drain()

    async def stop(self) -> None:
        await self.drain()
        if self._health_task is not None:
            self._health_task.cancel()
        if self._discovery is not None:
            self._discovery.stop()
        if self._bootstrap is not None:
            self._bootstrap.cancel()
        if self._grpc_server is not None:
            await self._grpc_server.stop(grace=None)
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        if self.pool is not None:
            await self.pool.close()
        if self.index is not None:
            await self.index.close()

    # -- what the fronts use -----------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._preparer is not None and bool(self.pool.routable())

    def serving(self) -> Serving:
        """The gateway's state for grpc.health.v1: ready as ``/readyz`` says (a routable target and
        its model facts), degraded while its targets all decode without their drafts."""
        ready = self.ready
        return Serving(live=True, ready=ready,
                       degraded=ready and self.health().status == pb.SERVING_STATUS_DEGRADED)

    @property
    def model_name(self) -> str:
        return self._preparer.facts.name if self._preparer is not None else (self.config.model_name or "")

    def preparer(self) -> Preparer:
        if self._preparer is None:
            raise GatewayError(grpc.StatusCode.UNAVAILABLE, "the gateway has no healthy target yet",
                               retry_after=self.config.retry_after_s)
        return self._preparer

    def authenticate(self, authorization: str | None) -> str | None:
        """The caller's API key (None without keys); raises UNAUTHENTICATED."""
        return self.api_keys.check(authorization)

    def health(self) -> pb.HealthResponse:
        healthy = self.pool.healthy() if self.pool is not None else []
        known = len(self.pool.targets) if self.pool is not None else 0
        if not healthy or self._preparer is None:
            return pb.HealthResponse(status=pb.SERVING_STATUS_NOT_SERVING,
                                     message=f"no healthy target ({known} known)")
        serving = [t for t in healthy if t.health.status == pb.SERVING_STATUS_SERVING]
        first = (serving or healthy)[0].health
        return pb.HealthResponse(
            status=pb.SERVING_STATUS_SERVING if serving else pb.SERVING_STATUS_DEGRADED,
            draft_connected=any(t.health.draft_connected for t in healthy), mode=first.mode,
            message=f"{len(healthy)} of {known} targets healthy",
            num_running=sum(t.health.num_running for t in healthy),
            num_waiting=sum(t.health.num_waiting for t in healthy),
            kv_cache_usage=sum(t.health.kv_cache_usage for t in healthy) / len(healthy),
            max_num_seqs=sum(t.health.max_num_seqs for t in healthy),
            prefix_cache_queried_tokens=sum(t.health.prefix_cache_queried_tokens for t in healthy),
            prefix_cache_hit_tokens=sum(t.health.prefix_cache_hit_tokens for t in healthy))

    def model_info(self) -> pb.ModelInfoResponse:
        info = self.pool.model_info() if self.pool is not None else None
        if info is None or self._preparer is None:
            raise GatewayError(grpc.StatusCode.UNAVAILABLE, "the gateway has no healthy target yet")
        out = pb.ModelInfoResponse()
        out.CopyFrom(info)
        out.model_name = self.model_name
        return out


def _read_chat_template(path: str | None) -> str | None:
    """``--chat-template FILE``'s template, read once at startup (a bad file fails there)."""
    if path is None:
        return None
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read --chat-template {path}: {exc}") from None


class GatewayThread:
    """A ``Gateway`` on its own event loop in a background thread (tests, benchmarks)."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.gateway = Gateway(config)
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.gateway.start())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self, timeout: float = 30.0) -> "GatewayThread":
        self._thread.start()
        self._started.wait(timeout)
        if self._error is not None:
            raise self._error
        return self

    def call(self, fn, *args):
        """Run ``fn(*args)`` (a coroutine function or plain function) on the gateway's loop."""
        async def run():
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(60)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.call(lambda: self.gateway.ready):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway has no healthy target after {timeout:.0f} s")
            time.sleep(0.05)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.gateway.http_port}"

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
        self.loop.close()


async def run_gateway(config: GatewayConfig) -> None:
    """``saguaro gateway``: serve until SIGTERM / SIGINT (tracing on when the OTEL_* environment asks)."""
    configure_tracing("saguaro-gateway")
    gateway = Gateway(config)
    await gateway.start()
    http = f", OpenAI HTTP on {config.host}:{gateway.http_port}" if gateway.http_port else ""
    index = f"prefix index {'redis ' + config.redis_url if config.redis_url else 'in-process'}" \
        if config.policy == "prefix" else "no prefix index"
    print(f"gateway (policy {config.policy}, {index}) listening on {config.host}:{gateway.grpc_port}{http}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await gateway.stop()
        shutdown_tracing()  # flush the last spans
