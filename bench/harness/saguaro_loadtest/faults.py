"""One fault under load: SIGKILL or SIGSTOP/SIGCONT of one service at a seeded random moment.

What the gateway did about it is read from its Prometheus counters; afterwards, with nothing
else restarted, one more request must complete exactly ("recovered"; docs/reliability.md).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field

from saguaro_loadtest.load import LoadGenerator, counts, probe
from saguaro_loadtest.measure import scrape_metric
from saguaro_loadtest.stack import Stack, role
from saguaro_loadtest.workload import Workload

FAULTS = ("kill", "stop")

# Killed, these come back (what Kubernetes does with a crashed pod): the gateway is the one front
# door (clients retry or resume meanwhile) and a restarted Redis must be refilled. A killed target
# or draft stays down: the stack must serve without it (the other target; plain decoding).
RESTARTED_AFTER_KILL = ("gateway", "redis")
# Every (service, fault) once, in an order one two-pair stack survives: the faults that keep
# both pairs first; after the draft of pair 1 and the target of pair 0 are killed, target 1
# serves alone, decoding without a draft.
FAULT_PLAN = [
    ("redis", "stop"),
    ("redis", "kill"),
    ("gateway", "stop"),
    ("draft0", "stop"),
    ("target0", "stop"),
    ("draft1", "kill"),
    ("target0", "kill"),
    ("gateway", "kill"),
]


def fault_name(service: str, fault: str) -> str:
    """``target0``, ``kill`` -> ``target-kill`` (the report's key)."""
    return f"{role(service)}-{fault}"


@dataclass
class FaultResult:
    """One fault under load: when it hit, how long it lasted, what the clients saw."""

    service: str
    fault: str  # kill | stop
    seed: int
    at_s: float  # after the load started
    window_s: float | None  # stopped for (stop) / down until serving again (kill + restart); None: stays down
    counts: dict[str, int] = field(default_factory=dict)
    inflight_at_fault: int = 0  # requests running when it hit
    midstream_at_fault: int = 0  # ... of which had streamed a token already
    fallback_rounds: int = 0  # rounds decoded without a draft, over all requests
    max_latency_s: float = 0.0  # the slowest request (a stall shows here)
    # What the gateway did about it (its counters; None when it was the one restarted):
    gateway_retries: int | None = None  # requests re-sent to another target before their first token
    gateway_migrations: int | None = None  # streams moved to another target after it
    recovered: bool = False  # a request sent after the fault completed exactly
    errors: list[str] = field(default_factory=list)  # distinct error messages seen (for the report)

    def as_dict(self) -> dict:
        return asdict(self)


GATEWAY_COUNTERS = ("saguaro_gateway_retries_total", "saguaro_gateway_migrations_total")


def gateway_counters(stack: Stack) -> dict[str, float]:
    return {name: scrape_metric(stack.http_url + "/metrics", name) for name in GATEWAY_COUNTERS}


def run_fault(stack: Stack, workload: Workload, service: str, fault: str, seed: int, concurrency: int = 4,
              after_s: float = 1.5) -> FaultResult:
    """Under load, hit ``service`` with ``fault`` at a random moment (0.3-1.5 s in, from
    ``seed``): ``kill`` = SIGKILL (the gateway and Redis are then started again, the others stay
    down); ``stop`` = SIGSTOP for 1-2.5 s, then SIGCONT. Load goes on for ``after_s`` more;
    then, without restarting anything else, one more request must complete exactly."""
    rng = random.Random(seed)
    at, pause = rng.uniform(0.3, 1.5), rng.uniform(1.0, 2.5)
    victim = stack.services[service]
    window = None
    before = gateway_counters(stack)
    load = LoadGenerator(stack.endpoint, workload, concurrency, seed=seed).start()
    try:
        time.sleep(at)
        at = load.elapsed()
        if fault == "kill":
            victim.kill()
            if role(service) in RESTARTED_AFTER_KILL:
                stack.restart(service)
                window = load.elapsed() - at
        elif fault == "stop":
            victim.pause()
            time.sleep(pause)
            victim.resume()
            window = load.elapsed() - at
        else:
            raise ValueError(f"unknown fault {fault!r}; use one of {FAULTS}")
        time.sleep(after_s)
    finally:
        if victim.paused:
            victim.resume()
        outcomes = load.stop()
    running = [o for o in outcomes if o.started_s <= at <= o.started_s + o.latency_s]
    result = FaultResult(service, fault, seed, round(at, 2), None if window is None else round(window, 2),
                         counts(outcomes), len(running),
                         sum(o.ttft_s is not None and o.started_s + o.ttft_s <= at for o in running),
                         sum(o.fallback_rounds for o in outcomes), round(max(o.latency_s for o in outcomes), 2),
                         errors=sorted({o.error for o in outcomes if o.error})[:10])
    if service != "gateway":
        after = gateway_counters(stack)
        result.gateway_retries, result.gateway_migrations = (round(after[k] - before[k]) for k in GATEWAY_COUNTERS)
    stack.wait_serving(time.monotonic() + 120)
    result.recovered = probe(stack.endpoint, workload, rng.randrange(len(workload.prompts))).kind == "completed"
    return result
