"""Routing: filter -> score -> pick, with small plugins that each do one thing.

* ``HealthFilter``: drop targets that are unhealthy, whose circuit is open, or that this
  request already tried; a request pinned to a target (``prefer``: the other choices of an
  ``n > 1`` request follow their first) keeps only that one while it can take requests.
* ``PrefixScorer``: leading prompt blocks the target holds (prefix index) / prompt blocks.
* ``LoadScorer``: few running + waiting requests and a free KV cache score high.
* ``ColdSpreadScorer``: for a prompt no target holds any of, prefer the target that least
  recently got such a request, so new prefixes spread over the pool instead of piling up.
* ``MaxScorePicker`` (weighted sum, ties broken at random) and ``RoundRobinPicker``.

Policies: ``prefix`` (default) = prefix x2 + load x1 + cold-spread x0.2 (a tie-breaker: one more
queued request outweighs it); ``least-load`` = load;
``round-robin``. The index being unavailable makes the prefix scorer score 0 everywhere, so
``prefix`` degrades to load (with cold-spread) and the decision metric says so.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from saguaro.services.gateway.metrics import GatewayMetrics
from saguaro.services.gateway.prefix_index import IndexUnavailable, PrefixIndex
from saguaro.services.gateway.targets import Target

PREFIX_WEIGHT, LOAD_WEIGHT, COLD_SPREAD_WEIGHT = 2.0, 1.0, 0.2


@dataclass
class RouteRequest:
    """What routing knows about a request."""

    block_hashes: Sequence[int]  # leading full prompt blocks (docs/prefix-caching.md hashes)
    exclude: set[str] = field(default_factory=set)  # addresses already tried
    prefer: str | None = None  # the address to use if it can take the request (choices of one prompt)
    # Filled by the scorers, for the decision's reason and metrics:
    prefix_blocks: dict[str, int] = field(default_factory=dict)  # address -> leading blocks held
    index_unavailable: bool = False


@dataclass
class Route:
    target: Target
    reason: str  # prefix_hit | cold | load | round_robin | index_unavailable
    prefix_blocks: int  # leading blocks the chosen target holds


class HealthFilter:
    def __call__(self, targets: Sequence[Target], request: RouteRequest) -> list[Target]:
        candidates = [t for t in targets if t.routable and t.address not in request.exclude]
        pinned = [t for t in candidates if t.address == request.prefer]
        return pinned or candidates


class Scorer:
    """Scores in [0, 1] per candidate; ``picked`` hears the decision (for stateful scorers)."""

    async def score(self, targets: Sequence[Target], request: RouteRequest) -> list[float]:
        raise NotImplementedError

    def picked(self, target: Target, request: RouteRequest) -> None:
        return None


class PrefixScorer(Scorer):
    def __init__(self, index: PrefixIndex, metrics: GatewayMetrics):
        self.index = index
        self.metrics = metrics

    async def score(self, targets: Sequence[Target], request: RouteRequest) -> list[float]:
        hashes = request.block_hashes
        instances = [t.instance_id for t in targets if t.instance_id is not None]
        if not hashes or not instances:
            return [0.0] * len(targets)
        started = time.perf_counter()
        try:
            held = await self.index.lookup(hashes, instances)
        except IndexUnavailable:
            request.index_unavailable = True
            return [0.0] * len(targets)
        self.metrics.index_lookup_time.labels(self.index.name).observe(time.perf_counter() - started)
        request.prefix_blocks = {t.address: held.get(t.instance_id, 0) for t in targets if t.instance_id is not None}
        return [request.prefix_blocks.get(t.address, 0) / len(hashes) for t in targets]


class LoadScorer(Scorer):
    async def score(self, targets: Sequence[Target], request: RouteRequest) -> list[float]:
        return [0.5 / (1 + t.queue_depth) + 0.5 * (1.0 - min(max(t.kv_usage, 0.0), 1.0)) for t in targets]


class ColdSpreadScorer(Scorer):
    def __init__(self) -> None:
        self._last_cold: dict[str, int] = {}  # address -> tick of its last cold request
        self._tick = itertools.count(1)

    def _cold(self, request: RouteRequest) -> bool:
        return not any(request.prefix_blocks.values())

    async def score(self, targets: Sequence[Target], request: RouteRequest) -> list[float]:
        if not self._cold(request) or len(targets) < 2:
            return [0.0] * len(targets)
        order = sorted(targets, key=lambda t: self._last_cold.get(t.address, 0))  # least recent first
        rank = {t.address: i for i, t in enumerate(order)}
        return [1.0 - rank[t.address] / (len(targets) - 1) for t in targets]

    def picked(self, target: Target, request: RouteRequest) -> None:
        if self._cold(request):
            self._last_cold[target.address] = next(self._tick)


class MaxScorePicker:
    def __init__(self, rng: random.Random | None = None):
        self.rng = rng or random.Random()

    def __call__(self, targets: Sequence[Target], scores: Sequence[float]) -> Target:
        best = max(scores)
        return self.rng.choice([t for t, s in zip(targets, scores) if s >= best - 1e-9])


class RoundRobinPicker:
    def __init__(self) -> None:
        self._next = itertools.count()

    def __call__(self, targets: Sequence[Target], scores: Sequence[float]) -> Target:
        ordered = sorted(targets, key=lambda t: t.address)
        return ordered[next(self._next) % len(ordered)]


class Router:
    def __init__(self, policy: str, scorers: Sequence[tuple[Scorer, float]], picker: Callable,
                 metrics: GatewayMetrics, model_name: Callable[[], str]):
        self.policy = policy
        self.filter = HealthFilter()
        self.scorers = list(scorers)
        self.picker = picker
        self.metrics = metrics
        self.model_name = model_name
        self.uses_prefix = any(isinstance(s, PrefixScorer) for s, _ in self.scorers)

    async def pick(self, targets: Sequence[Target], request: RouteRequest) -> Route | None:
        """The target for this request, or None when no target can take it."""
        started = time.perf_counter()
        candidates = self.filter(targets, request)
        if not candidates:
            return None
        totals = [0.0] * len(candidates)
        for scorer, weight in self.scorers:
            for i, s in enumerate(await scorer.score(candidates, request)):
                totals[i] += weight * s
        target = self.picker(candidates, totals)
        for scorer, _ in self.scorers:
            scorer.picked(target, request)
        route = Route(target, self._reason(target, request), request.prefix_blocks.get(target.address, 0))
        self.metrics.decisions.labels(self.policy, route.reason).inc()
        self.metrics.routing_time.observe(time.perf_counter() - started)
        if self.uses_prefix and request.block_hashes and not request.index_unavailable:
            self.metrics.prefix_lookup(self.model_name(), route.prefix_blocks > 0)
        return route

    def _reason(self, target: Target, request: RouteRequest) -> str:
        if self.policy == "round-robin":
            return "round_robin"
        if self.uses_prefix:
            if request.index_unavailable:
                return "index_unavailable"
            if request.prefix_blocks.get(target.address, 0) > 0:
                return "prefix_hit"
            if not any(request.prefix_blocks.values()):
                return "cold"
        return "load"


def make_router(policy: str, index: PrefixIndex | None, metrics: GatewayMetrics,
                model_name: Callable[[], str], rng: random.Random | None = None) -> Router:
    if policy == "round-robin":
        return Router(policy, [], RoundRobinPicker(), metrics, model_name)
    if policy == "least-load":
        return Router(policy, [(LoadScorer(), LOAD_WEIGHT)], MaxScorePicker(rng), metrics, model_name)
    assert index is not None, "the prefix policy needs an index"
    scorers = [(PrefixScorer(index, metrics), PREFIX_WEIGHT), (LoadScorer(), LOAD_WEIGHT),
               (ColdSpreadScorer(), COLD_SPREAD_WEIGHT)]
    return Router(policy, scorers, MaxScorePicker(rng), metrics, model_name)
