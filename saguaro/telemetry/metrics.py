"""Prometheus metric definitions for every Saguaro service, and the objects that feed them.

Why the ``vllm:`` names: the Gateway API Inference Extension's endpoint picker, KEDA
ScaledObjects and the community dashboards hard-code vLLM's names (``vllm:num_requests_waiting``,
``vllm:kv_cache_usage_perc``, ...), so a target pod that exports them drops into those stacks
unchanged. Everything vLLM has no name for is ``saguaro_*``, exported as counters wherever a
ratio is wanted (hit rate, idle fraction, overlap) so PromQL computes it across pods.
Every series carries ``model_name`` like vLLM's.

``DEFINITIONS`` is the single list: the services register from it, the dashboard test checks
every query against it, docs/observability.md mirrors it. Counters are named without
``_total`` here (prometheus_client appends it on exposition, as vLLM's do).
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString as float_to_go_string

# Buckets: vLLM's TTFT/ITL/e2e buckets, extended downwards because a small model's engine step
# (the unit of inter-token latency) is often below 10 ms.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
               5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
# vLLM's 1-2-5 series for token counts (its build_1_2_5_buckets), to a million tokens.
TOKEN_BUCKETS = tuple(float(m * 10 ** e) for e in range(7) for m in (1, 2, 5))[:19]
ROUND_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2,
                 0.5, 1.0, 2.5)

MODEL = ("model_name",)


@dataclass(frozen=True)
class MetricDef:
    name: str  # as registered; counters without the _total suffix
    kind: str  # counter | gauge | histogram
    help: str
    service: str  # target | draft | gateway
    labels: tuple[str, ...] = MODEL
    buckets: tuple[float, ...] | None = None

    def samples(self) -> tuple[str, ...]:
        """Sample names that appear in the exposition (what PromQL queries name)."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_sum", f"{self.name}_count")
        return (self.name,)


def _d(name: str, kind: str, help: str, service: str, labels: tuple[str, ...] = MODEL, buckets=None) -> MetricDef:
    return MetricDef(name, kind, help, service, labels, buckets)


DEFINITIONS: tuple[MetricDef, ...] = (
    # -- target: vLLM-compatible (GIE model-server protocol, KEDA, vLLM dashboards) ------------------
    _d("vllm:num_requests_running", "gauge", "Requests in the decode batch.", "target"),
    _d("vllm:num_requests_waiting", "gauge", "Requests admitted but waiting for a batch slot or KV blocks.", "target"),
    _d("vllm:kv_cache_usage_perc", "gauge", "Fraction of the target's KV-cache blocks in use (0..1).", "target"),
    _d("vllm:cache_config_info", "gauge", "KV-cache configuration (value 1; the labels carry it).", "target",
       ("model_name", "block_size", "num_gpu_blocks")),
    _d("vllm:num_preemptions", "counter", "Sequences preempted (KV freed, recomputed later).", "target"),
    _d("vllm:prompt_tokens", "counter", "Prompt tokens prefilled.", "target"),
    _d("vllm:generation_tokens", "counter", "Tokens generated (committed).", "target"),
    _d("vllm:request_success", "counter", "Finished requests by finish reason.", "target",
       ("model_name", "finished_reason")),
    _d("vllm:time_to_first_token_seconds", "histogram", "Arrival to first token, seconds.", "target",
       buckets=TTFT_BUCKETS),
    _d("vllm:inter_token_latency_seconds", "histogram",
       "Gap between a request's consecutive engine steps that emitted tokens, one observation per step "
       "(a speculative round committing several tokens counts once, as in vLLM v1), seconds.", "target",
       buckets=ITL_BUCKETS),
    _d("vllm:e2e_request_latency_seconds", "histogram", "Arrival to last token, seconds.", "target",
       buckets=E2E_BUCKETS),
    _d("vllm:request_queue_time_seconds", "histogram",
       "Arrival to the first engine step that scheduled the request (waiting phase), seconds.", "target",
       buckets=E2E_BUCKETS),
    _d("vllm:request_prefill_time_seconds", "histogram",
       "First scheduled to first token (prefill phase), seconds.", "target", buckets=E2E_BUCKETS),
    _d("vllm:request_decode_time_seconds", "histogram",
       "First token to last token (decode phase), seconds.", "target", buckets=E2E_BUCKETS),
    _d("vllm:request_time_per_output_token_seconds", "histogram",
       "Per request: (end-to-end latency - time to first token) / (output tokens - 1), seconds; 0 for a "
       "request with at most one output token (vLLM's definition).", "target", buckets=ITL_BUCKETS),
    _d("vllm:request_prompt_tokens", "histogram", "Prompt tokens per finished request.", "target",
       buckets=TOKEN_BUCKETS),
    _d("vllm:request_generation_tokens", "histogram", "Output tokens per finished request.", "target",
       buckets=TOKEN_BUCKETS),
    _d("vllm:request_max_num_generation_tokens", "histogram",
       "Most output tokens of any sequence of a finished request (one sequence per engine request here: "
       "its output tokens).", "target", buckets=TOKEN_BUCKETS),
    _d("vllm:prefix_cache_queries", "counter",
       "Prompt tokens looked up in the prefix cache (vLLM: queried tokens).", "target"),
    _d("vllm:prefix_cache_hits", "counter",
       "Prompt tokens found in the prefix cache (vLLM: hit tokens); hit rate = rate(hits) / rate(queries).",
       "target"),
    _d("vllm:spec_decode_num_drafts", "counter", "Proposals verified (one per speculative row-round).", "target"),
    _d("vllm:spec_decode_num_draft_tokens", "counter", "Draft tokens verified (K per proposal).", "target"),
    _d("vllm:spec_decode_num_accepted_tokens", "counter", "Draft tokens accepted.", "target"),
    _d("vllm:spec_decode_num_accepted_tokens_per_pos", "counter",
       "Draft tokens accepted at each position 0..K-1.", "target", ("model_name", "position")),
    # -- target: Saguaro speculation ------------------------------------------------------------------
    _d("saguaro_spec_cache_hits", "counter", "Rows whose speculation-cache lookup hit.", "target"),
    _d("saguaro_spec_cache_misses", "counter", "Rows whose speculation-cache lookup missed.", "target"),
    _d("saguaro_spec_backups", "counter", "Rows served by a backup after a miss, by kind (jit, fast).", "target",
       ("model_name", "kind")),
    _d("saguaro_ar_fallback_rounds", "counter",
       "Row-rounds decoded without a proposal although speculation is on (draft down or row refused).", "target"),
    _d("saguaro_draft_failures", "counter", "Times the target lost its draft (timeout, error, closed).", "target"),
    _d("saguaro_draft_connected", "gauge", "1 while the target has a draft session.", "target"),
    _d("saguaro_draft_transport_info", "gauge", "Transport of the current draft session (value 1).", "target",
       ("model_name", "transport")),
    _d("saguaro_round_duration_seconds", "histogram", "One decode round on the target: draft wait + verify.",
       "target", buckets=ROUND_BUCKETS),
    _d("saguaro_draft_wait_seconds", "counter", "Time rounds waited for the draft's reply (critical path).",
       "target"),
    _d("saguaro_verify_seconds", "counter", "Time rounds spent verifying and committing.", "target"),
    _d("saguaro_draft_transport_seconds", "counter",
       "Draft wait not spent in the draft's lookup and backup: the round trip's transport and queuing.", "target"),
    _d("saguaro_rounds_by_arm", "counter",
       "Decode rounds by how they ran: ar (plain), sd (synchronous), ssd (the speculation governor's arm).", "target",
       ("model_name", "arm")),
    _d("saguaro_draft_build_seconds", "counter",
       "Draft cache-building time reported to the target (glue, fork, tree).", "target"),
    _d("saguaro_draft_overlap_seconds", "counter",
       "Part of the draft's build hidden behind the target's own work (verify, commit); a lower bound.", "target"),
    # -- draft -------------------------------------------------------------------------------------------
    _d("saguaro_draft_rounds", "counter", "Speculate requests answered.", "draft"),
    _d("saguaro_draft_idle_seconds", "counter", "Draft idle between finishing a build and the next request.",
       "draft"),
    _d("saguaro_draft_busy_seconds", "counter", "Draft busy time by phase (prefill, lookup, backup, build).",
       "draft", ("model_name", "phase")),
    _d("saguaro_draft_idle_fraction", "gauge", "Idle share of the draft's recent rounds (last 64).", "draft"),
    _d("saguaro_draft_cache_entries", "gauge", "Entries in the speculation cache.", "draft"),
    _d("saguaro_draft_sessions", "counter", "Target sessions accepted (handshakes).", "draft"),
    _d("saguaro_draft_kv_cache_usage_perc", "gauge", "Fraction of the draft's KV-cache blocks in use (0..1).",
       "draft"),
    # -- gateway (fed by services/gateway) ---------------------------------------------------------------
    _d("saguaro_gateway_prefix_index_lookups", "counter", "Prefix-index lookups made while routing.", "gateway"),
    _d("saguaro_gateway_prefix_index_hits", "counter", "Prefix-index lookups that found a cached prefix.",
       "gateway"),
)

BY_NAME: dict[str, MetricDef] = {d.name: d for d in DEFINITIONS}


def exported_samples(service: str | None = None) -> dict[str, MetricDef]:
    """Sample name -> definition, for one service or all (what a dashboard query may name)."""
    return {s: d for d in DEFINITIONS if service in (None, d.service) for s in d.samples()}


def _register(registry: CollectorRegistry, service: str) -> dict[str, Any]:
    """Create the ordinary (non-callback) metrics of ``service`` in ``registry``."""
    out: dict[str, Any] = {}
    for d in DEFINITIONS:
        if d.service != service or d.name in _CALLBACK:
            continue
        if d.kind == "counter":
            out[d.name] = Counter(d.name, d.help, d.labels, registry=registry)
        elif d.kind == "gauge":
            out[d.name] = Gauge(d.name, d.help, d.labels, registry=registry)
        else:
            out[d.name] = Histogram(d.name, d.help, d.labels, registry=registry, buckets=d.buckets)
    return out


# Read from live state at scrape time by a collector instead of being updated on the hot path.
_CALLBACK = {"vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
             "vllm:cache_config_info", "vllm:num_preemptions", "vllm:prefix_cache_queries", "vllm:prefix_cache_hits",
             "saguaro_draft_failures", "saguaro_draft_connected",
             "saguaro_draft_transport_info", "saguaro_draft_idle_fraction", "saguaro_draft_kv_cache_usage_perc",
             # RoundTotals:
             "vllm:spec_decode_num_drafts", "vllm:spec_decode_num_draft_tokens", "vllm:spec_decode_num_accepted_tokens",
             "vllm:spec_decode_num_accepted_tokens_per_pos", "saguaro_spec_cache_hits", "saguaro_spec_cache_misses",
             "saguaro_spec_backups", "saguaro_ar_fallback_rounds", "saguaro_round_duration_seconds",
             "saguaro_draft_wait_seconds", "saguaro_verify_seconds", "saguaro_draft_build_seconds",
             "saguaro_draft_overlap_seconds", "saguaro_draft_transport_seconds", "saguaro_rounds_by_arm"}


def _family(name: str, model: str, value: float, **labels: str):
    d = BY_NAME[name]
    cls = CounterMetricFamily if d.kind == "counter" else GaugeMetricFamily
    family = cls(name, d.help, labels=list(d.labels))
    family.add_metric([model, *labels.values()], value)
    return family


class _ServiceMetrics:
    """What the target's and the draft's metrics share: their registry, the ``model_name`` every
    series carries, and the service's ordinary metrics registered in it."""

    def __init__(self, registry: CollectorRegistry, model_name: str, service: str):
        self.registry = registry
        self.model_name = model_name
        self._metrics = _register(registry, service)

    def _child(self, name: str, **labels: str) -> Any:
        """The series of metric ``name`` for this model (and ``labels``)."""
        return self._metrics[name].labels(model_name=self.model_name, **labels)


class TargetMetrics(_ServiceMetrics):
    """The target's metrics. Rounds add batch aggregates to ``rounds`` (plain numbers, whatever
    the batch size); requests update prometheus_client objects from their gRPC handler threads;
    queue and cache gauges are read at scrape time."""

    def __init__(self, registry: CollectorRegistry, model_name: str):
        super().__init__(registry, model_name, "target")
        self.prompt_tokens = self._child("vllm:prompt_tokens")
        self.generation_tokens = self._child("vllm:generation_tokens")
        self._success = self._metrics["vllm:request_success"]
        self.ttft = self._child("vllm:time_to_first_token_seconds")
        self.itl = self._child("vllm:inter_token_latency_seconds")
        self.e2e = self._child("vllm:e2e_request_latency_seconds")
        self.queue_time = self._child("vllm:request_queue_time_seconds")
        self.prefill_time = self._child("vllm:request_prefill_time_seconds")
        self.decode_time = self._child("vllm:request_decode_time_seconds")
        self.tpot = self._child("vllm:request_time_per_output_token_seconds")
        self.prompt_lengths = self._child("vllm:request_prompt_tokens")
        self.output_lengths = self._child("vllm:request_generation_tokens")
        self.max_output_lengths = self._child("vllm:request_max_num_generation_tokens")
        self.rounds = RoundTotals()
        registry.register(_RoundState(self.rounds, model_name))

    def finished(self, reason: str) -> None:
        self._success.labels(model_name=self.model_name, finished_reason=reason).inc()

    def phases(self, timings: Mapping[str, float]) -> None:
        """Observe a finished request's queue, prefill and decode times (vLLM v1's phases) from
        the engine loop's ``Final.timings`` (seconds from arrival: ``queue_s`` to its first
        scheduled step, ``time_to_first_token_s`` to its first token, ``total_s`` to its last).
        A request that ended before its first token has no prefill or decode phase: only its
        queue time is observed."""
        queue = timings.get("queue_s", 0.0)
        self.queue_time.observe(queue)
        first = timings.get("time_to_first_token_s", 0.0)
        if first > 0:
            self.prefill_time.observe(max(0.0, first - queue))
            self.decode_time.observe(max(0.0, timings.get("total_s", first) - first))

    def lengths(self, timings: Mapping[str, float], prompt_tokens: int, output_tokens: int) -> None:
        """Observe a finished request's sizes and its time per output token, as vLLM v1 does at
        request end (the vLLM dashboard's length heatmaps and TPOT panel read them)."""
        self.prompt_lengths.observe(prompt_tokens)
        self.output_lengths.observe(output_tokens)
        self.max_output_lengths.observe(output_tokens)
        decode = timings.get("total_s", 0.0) - timings.get("time_to_first_token_s", 0.0)
        self.tpot.observe(max(0.0, decode) / (output_tokens - 1) if output_tokens > 1 else 0.0)

    def watch(self, engine: Any, load: Callable[[], Any] | None = None) -> None:
        """Export the engine's queue, KV-cache and draft-session state, read at each scrape.

        ``load`` returns the engine loop's latest load snapshot (``num_running``,
        ``num_waiting``, ``kv_cache_usage``), published between steps by the loop thread;
        without it the scheduler is read directly.
        """
        self.registry.register(_EngineState(engine, self.model_name, load))


class RoundTotals:
    """Per-round counters the engine thread adds to with plain arithmetic, exported at scrape.

    Why not prometheus_client objects: each of their updates takes a lock and a few calls and a
    round makes a dozen: 12 µs per round in a hot loop, ~100 µs with caches cold as they are
    after the model's forward. Summing ints and floats here: 2 µs hot, ~60 µs cold. A scrape
    reads them (single attribute loads, never torn) and builds the families.
    """

    __slots__ = ("drafts", "draft_tokens", "accepted", "per_pos", "hits", "misses", "jit", "fast", "fallback_rounds",
                 "draft_wait", "verify", "build", "overlap", "transport", "arm_rounds", "round_counts", "round_sum")

    def __init__(self) -> None:
        self.drafts = self.draft_tokens = self.accepted = self.hits = self.misses = 0
        self.jit = self.fast = self.fallback_rounds = 0
        self.per_pos: list[int] = []  # accepted at position i (grown to K)
        self.draft_wait = self.verify = self.build = self.overlap = self.transport = self.round_sum = 0.0
        self.arm_rounds: dict[str, int] = {}
        self.round_counts = [0] * (len(ROUND_BUCKETS) + 1)  # per bucket (not cumulative), last = +Inf

    def observe_round(self, seconds: float) -> None:
        self.round_counts[bisect_left(ROUND_BUCKETS, seconds)] += 1  # le is inclusive
        self.round_sum += seconds


class _RoundState:
    def __init__(self, totals: RoundTotals, model_name: str):
        self.totals, self.model = totals, model_name

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        t, model = self.totals, self.model
        for name, value in (("vllm:spec_decode_num_drafts", t.drafts),
                            ("vllm:spec_decode_num_draft_tokens", t.draft_tokens),
                            ("vllm:spec_decode_num_accepted_tokens", t.accepted),
                            ("saguaro_spec_cache_hits", t.hits), ("saguaro_spec_cache_misses", t.misses),
                            ("saguaro_ar_fallback_rounds", t.fallback_rounds),
                            ("saguaro_draft_wait_seconds", t.draft_wait), ("saguaro_verify_seconds", t.verify),
                            ("saguaro_draft_build_seconds", t.build), ("saguaro_draft_overlap_seconds", t.overlap),
                            ("saguaro_draft_transport_seconds", t.transport)):
            yield _family(name, model, value)
        d = BY_NAME["saguaro_rounds_by_arm"]
        arms = CounterMetricFamily(d.name, d.help, labels=list(d.labels))
        for arm, value in sorted(t.arm_rounds.items()):
            arms.add_metric([model, arm], value)
        yield arms
        d = BY_NAME["vllm:spec_decode_num_accepted_tokens_per_pos"]
        per_pos = CounterMetricFamily(d.name, d.help, labels=list(d.labels))
        for i, value in enumerate(list(t.per_pos)):
            per_pos.add_metric([model, str(i)], value)
        yield per_pos
        d = BY_NAME["saguaro_spec_backups"]
        backups = CounterMetricFamily(d.name, d.help, labels=list(d.labels))
        backups.add_metric([model, "jit"], t.jit)
        backups.add_metric([model, "fast"], t.fast)
        yield backups
        d = BY_NAME["saguaro_round_duration_seconds"]
        counts, cumulative, buckets = list(t.round_counts), 0, []
        for le, count in zip([*map(float_to_go_string, ROUND_BUCKETS), "+Inf"], counts):
            cumulative += count
            buckets.append((le, cumulative))
        histogram = HistogramMetricFamily(d.name, d.help, labels=list(d.labels))
        histogram.add_metric([model], buckets, sum_value=t.round_sum)
        yield histogram


class _EngineState:
    """Reads the loop's load snapshot and plain counters of the engine (single attribute
    reads); a scrape never waits for or blocks the engine."""

    def __init__(self, engine: Any, model_name: str, load: Callable[[], Any] | None):
        self.engine, self.model, self.load = engine, model_name, load

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        engine, model = self.engine, self.model
        scheduler, blocks = engine.scheduler, engine.runner.blocks
        if self.load is not None:
            load = self.load()
            running, waiting, usage = load.num_running, load.num_waiting, load.kv_cache_usage
            queried, hits = load.prefix_cache_queried_tokens, load.prefix_cache_hit_tokens
        else:
            running, waiting, usage = len(scheduler.running), len(scheduler.waiting), blocks.usage()
            queried, hits = blocks.stats.queried_tokens, blocks.stats.hit_tokens
        yield _family("vllm:num_requests_running", model, running)
        yield _family("vllm:num_requests_waiting", model, waiting)
        yield _family("vllm:kv_cache_usage_perc", model, usage)
        yield _family("vllm:cache_config_info", model, 1, block_size=str(engine.config.block_size),
                      num_gpu_blocks=str(len(blocks.blocks)))
        yield _family("vllm:num_preemptions", model, scheduler.num_preemptions)
        yield _family("vllm:prefix_cache_queries", model, queried)
        yield _family("vllm:prefix_cache_hits", model, hits)
        proposer = engine.proposer
        if proposer is not None:
            yield _family("saguaro_draft_failures", model, proposer.failures)
            yield _family("saguaro_draft_connected", model, float(proposer.channel is not None))
            yield _family("saguaro_draft_transport_info", model, 1, transport=proposer.transport)


class DraftMetrics(_ServiceMetrics):
    """The draft service's metrics, updated by the service after each request and build (on its
    serving thread, off the target's critical path)."""

    WINDOW = 64  # rounds in the idle-fraction window

    def __init__(self, registry: CollectorRegistry, model_name: str):
        super().__init__(registry, model_name, "draft")
        self.rounds = self._child("saguaro_draft_rounds")
        self.idle = self._child("saguaro_draft_idle_seconds")
        self.busy = {phase: self._child("saguaro_draft_busy_seconds", phase=phase)
                     for phase in ("prefill", "lookup", "backup", "build")}
        self.cache_entries = self._child("saguaro_draft_cache_entries")
        self.sessions = self._child("saguaro_draft_sessions")
        self._window: deque[tuple[float, float]] = deque(maxlen=self.WINDOW)  # (idle, busy) per round
        self._current = [0.0, 0.0]
        self._lock = threading.Lock()
        self.runner_of: Callable[[], Any] | None = None  # the draft's current ModelRunner (KV usage)
        registry.register(_DraftState(self))

    def served(self, response: Any) -> None:
        """Account one answered request (a ``SpeculationResponse``)."""
        kind = response.WhichOneof("kind")
        if kind == "speculate":
            t = response.speculate.timings
            idle, lookup, backup = t.idle_us / 1e6, t.lookup_us / 1e6, t.backup_us / 1e6
            self.rounds.inc()
            self.idle.inc(idle)
            self.busy["lookup"].inc(lookup)
            self.busy["backup"].inc(backup)
            with self._lock:
                self._window.append((self._current[0], self._current[1]))
                self._current = [idle, lookup + backup]
        elif kind == "prefill":
            seconds = response.prefill.prefill_us / 1e6
            self.busy["prefill"].inc(seconds)
            with self._lock:
                self._current[1] += seconds

    def built(self, seconds: float, cache_entries: int) -> None:
        self.busy["build"].inc(seconds)
        self.cache_entries.set(cache_entries)
        with self._lock:
            self._current[1] += seconds

    def idle_fraction(self) -> float:
        with self._lock:
            rounds = list(self._window)
        idle = sum(i for i, _ in rounds)
        total = idle + sum(b for _, b in rounds)
        return idle / total if total > 0 else 1.0


class _DraftState:
    def __init__(self, metrics: DraftMetrics):
        self.metrics = metrics

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator:
        m = self.metrics
        yield _family("saguaro_draft_idle_fraction", m.model_name, m.idle_fraction())
        if m.runner_of is not None:
            yield _family("saguaro_draft_kv_cache_usage_perc", m.model_name, m.runner_of().blocks.usage())


class GatewayMetrics:
    """Prefix-index accounting for the gateway: ``lookup(hit)`` once per routing decision that
    consulted the index. Hit rate in PromQL: rate(hits_total) / rate(lookups_total)."""

    def __init__(self, registry: CollectorRegistry, model_name: str):
        m = _register(registry, "gateway")
        self.lookups = m["saguaro_gateway_prefix_index_lookups"].labels(model_name=model_name)
        self.hits = m["saguaro_gateway_prefix_index_hits"].labels(model_name=model_name)

    def lookup(self, hit: bool) -> None:
        self.lookups.inc()
        if hit:
            self.hits.inc()
