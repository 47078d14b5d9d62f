"""The target pods the gateway knows: connections, health, load, circuit breakers.

Discovery (a static list or the Kubernetes watch) calls ``TargetPool.set_addresses`` with the
full current set; the pool opens a channel per new address, starts polling its Health (which
carries its load) and, for prefix-aware routing, watching its KV events; it closes what left.
Everything runs on the gateway's event loop, so the state needs no locks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable

import grpc

from saguaro.services.gateway.breaker import CircuitBreaker
from saguaro.services.gateway.config import GatewayConfig
from saguaro.services.gateway.metrics import GatewayMetrics
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc
from saguaro.v1 import routing_pb2_grpc as rpb_grpc

log = logging.getLogger(__name__)

ROUTABLE_STATUS = (pb.SERVING_STATUS_SERVING, pb.SERVING_STATUS_DEGRADED)
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 256 << 20),  # KV snapshots and tokenizer files
    ("grpc.enable_retries", 0),  # the gateway retries itself, on another target
]


class Target:
    """One target pod as this gateway sees it."""

    def __init__(self, address: str, channel: grpc.aio.Channel, breaker: CircuitBreaker):
        self.address = address
        self.channel = channel
        self.inference = pb_grpc.InferenceStub(channel)
        self.routing = rpb_grpc.TargetRoutingStub(channel)
        self.breaker = breaker
        self.health: pb.HealthResponse | None = None  # last answer; None: unknown or unreachable
        self.model_info: pb.ModelInfoResponse | None = None
        self.instance_id: str | None = None  # from its KV events (the prefix index keys on it)
        self.inflight = 0  # this gateway's requests on it, not finished
        self.inflight_at_report = 0  # ours when the last Health answer arrived (counted in it)
        self.tasks: list[asyncio.Task] = []

    @property
    def healthy(self) -> bool:
        return self.health is not None and self.health.status in ROUTABLE_STATUS and self.model_info is not None

    @property
    def routable(self) -> bool:
        return self.healthy and self.breaker.allows()

    @property
    def queue_depth(self) -> int:
        """Requests on the pod: other gateways' from its last report, plus ours now. A report is
        up to one health interval old; counting our own requests live keeps a request that just
        finished from looking busy (which would skew cold-prefix spreading between pods)."""
        reported = self.health.num_running + self.health.num_waiting if self.health is not None else 0
        return max(reported - self.inflight_at_report, 0) + self.inflight

    @property
    def kv_usage(self) -> float:
        return self.health.kv_cache_usage if self.health is not None else 0.0

    def __repr__(self) -> str:
        return f"Target({self.address})"


class TargetPool:
    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics,
                 credentials: grpc.ChannelCredentials | None = None,
                 watchers: Iterable[Callable[[Target], asyncio.Task]] = ()):
        """``watchers``: extra per-target tasks started with each target (the KV-event watch)."""
        self.config = config
        self.metrics = metrics
        self.credentials = credentials
        self.watchers = list(watchers)
        self.targets: dict[str, Target] = {}
        self.changed = asyncio.Event()  # set whenever a target's health changes (readiness waits on it)
        self.on_removed: list[Callable[[Target], None]] = []

    # -- membership --------------------------------------------------------------------------
    def set_addresses(self, addresses: Iterable[str]) -> None:
        wanted = set(addresses)
        for address in sorted(set(self.targets) - wanted):
            self._remove(address)
        for address in sorted(wanted - set(self.targets)):
            self._add(address)

    def _add(self, address: str) -> None:
        if self.credentials is not None:
            name = self.config.target_tls_server_name
            options = CHANNEL_OPTIONS + ([("grpc.ssl_target_name_override", name)] if name else [])
            channel = grpc.aio.secure_channel(address, self.credentials, options=options)
        else:
            channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        breaker = CircuitBreaker(self.config.breaker_failures, self.config.breaker_cooldown_s,
                                 on_change=lambda state: self.metrics.circuit_changed(address, state))
        target = Target(address, channel, breaker)
        self.targets[address] = target
        self.metrics.target_added(address)
        target.tasks.append(asyncio.get_running_loop().create_task(self._monitor(target), name=f"health {address}"))
        target.tasks.extend(start(target) for start in self.watchers)
        log.info("target %s added", address)

    def _remove(self, address: str) -> asyncio.Task:
        target = self.targets.pop(address)
        for task in target.tasks:
            task.cancel()
        self.metrics.target_removed(address)
        for callback in self.on_removed:
            callback(target)
        self.changed.set()
        log.info("target %s removed", address)
        return asyncio.get_running_loop().create_task(target.channel.close(grace=None))

    async def close(self) -> None:
        """Remove every target and wait (briefly) for its tasks to end: a task still awaiting
        Redis or a stream when the loop closes would be torn down half-way."""
        tasks = [task for target in self.targets.values() for task in target.tasks]
        await asyncio.gather(*(self._remove(address) for address in list(self.targets)))
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # -- views -------------------------------------------------------------------------------
    def routable(self) -> list[Target]:
        return [t for t in self.targets.values() if t.routable]

    def healthy(self) -> list[Target]:
        return [t for t in self.targets.values() if t.healthy]

    def model_info(self) -> pb.ModelInfoResponse | None:
        """The model facts of a healthy target (all targets serve the same model)."""
        return next((t.model_info for t in self.targets.values() if t.healthy), None)

    # -- health ------------------------------------------------------------------------------
    def mark_unreachable(self, target: Target) -> None:
        """A request could not reach the target: stop routing to it until Health answers again."""
        self._set_health(target, None)

    def _set_health(self, target: Target, health: pb.HealthResponse | None) -> None:
        was = target.healthy
        target.health = health
        target.inflight_at_report = target.inflight
        if target.healthy != was:
            self.metrics.target_healthy.labels(target.address).set(int(target.healthy))
            log.info("target %s is %s", target.address, "healthy" if target.healthy else "unhealthy")
            self.changed.set()

    async def _monitor(self, target: Target) -> None:
        interval = self.config.health_interval_s
        timeout = max(interval, 1.0)
        while True:
            try:
                if target.model_info is None:
                    target.model_info = await target.inference.ModelInfo(pb.ModelInfoRequest(), timeout=timeout)
                health = await target.inference.Health(pb.HealthRequest(), timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                if target.health is not None:
                    log.warning("target %s: Health failed (%s: %s)", target.address, exc.code().name, exc.details())
                health = None
            self._set_health(target, health)
            await asyncio.sleep(interval)
