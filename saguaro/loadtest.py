"""Load, faults and soak over a local Saguaro stack of real processes.

The chaos tests (``tests/chaos``), the CI soak (``tests/soak``) and the benchmarks
(``bench/soak.py``, ``bench/chaos.py``) drive the same stack with the same load generator and
judge every request the same way, so the code lives here, importable by all of them (the
benchmarks run as scripts and cannot import the test tree).

* ``Stack``: redis-server, N (``saguaro draft``, ``saguaro target --mode ssd``) pairs and a
  ``saguaro gateway``, each a child process on fixed loopback ports, so killing one and starting
  the same command again is what a pod restart looks like to the others.
* ``LoadGenerator``: N concurrent greedy streaming requests through the gateway (the async SDK),
  each judged against the target-only greedy tokens (``judge``).
* ``run_fault``: SIGKILL or SIGSTOP/SIGCONT one service at a seeded random point under load,
  restore it, and count the outcomes; ``RssSampler`` tracks every process's memory.

Outcomes: ``completed`` (output identical to the reference), ``failed_retryable`` (a retryable
error before the first token: the client may send the request again), ``failed`` (any other
failure: an error after tokens were streamed, or a non-retryable one; never acceptable) and
``corrupted`` (a token that differs from the reference, or a missing or repeated one).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from saguaro.net import free_port

OUTCOMES = ("completed", "failed_retryable", "failed", "corrupted")
# Refused before any token with these, a request was not served: sending it again is safe.
RETRYABLE_CODES = {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}
FAULTS = ("kill", "stop")


def role(name: str) -> str:
    """``target1`` -> ``target``: what a service of the stack is."""
    return name.rstrip("0123456789")


# Started through this exec shim, a service gets SIGKILL when its parent dies (PR_SET_PDEATHSIG,
# Linux; kept across exec), so a killed test run leaves no stray servers. It is not set between
# fork and exec (preexec_fn): forking a process with live gRPC threads there can crash the child.
_DIE_WITH_PARENT = ([sys.executable, "-c", ("import ctypes, os, sys; ctypes.CDLL(None).prctl(1, 9); "
                                             "os.execvp(sys.argv[1], sys.argv[1:])")]
                    if sys.platform.startswith("linux") else [])


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc); 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Service:
    """One process of the stack, started from a fixed command line (fixed ports): ``kill`` then
    ``start`` is a restart the rest of the stack sees as the same pod coming back."""

    def __init__(self, name: str, cmd: list[str], address: str, log_path: Path):
        self.name, self.cmd, self.address, self.log_path = name, cmd, address, log_path
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self.starts = 0

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> Service:
        self.starts += 1
        with open(self.log_path, "a") as log:  # restarts append: one log per service
            log.write(f"--- start {self.starts}: {' '.join(self.cmd)}\n")
            log.flush()
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
            self.proc = subprocess.Popen([*_DIE_WITH_PARENT, *self.cmd], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.paused = False
        return self

    def wait_ready(self, deadline: float) -> None:
        """Until the port accepts connections (every service binds it once it can serve)."""
        host, port = self.address.rsplit(":", 1)
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) while starting; see {self.log_path}:\n"
                                   f"{self.tail()}")
            try:
                with socket.create_connection((host, int(port)), timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not listen on {self.address} in time; see {self.log_path}")
                time.sleep(0.05)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no goodbye, sockets reset, in-flight work lost."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the process freezes with its sockets open (a hung pod, a long GC, a VM stall)."""
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if not self.alive():
            return
        if self.paused:
            self.resume()
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class StackSpec:
    """What to run. Defaults are small: tiny models on a shared CPU."""

    target_model: str
    draft_model: str
    log_dir: Path
    pairs: int = 2  # (draft, target) pairs behind the gateway
    redis: bool = True  # prefix index in a real redis-server (else in the gateway)
    k: int = 3
    fan_out: int = 2
    kv_cache_bytes: int = 16 << 20
    target_kv_cache_bytes: int | None = None  # the targets' own budget (memory pressure); None: kv_cache_bytes
    max_num_seqs: int = 8
    max_model_len: int | None = None  # None: the model's
    draft_timeout_s: float = 1.0  # a stalled draft costs the target this long per round before it falls back
    max_queue: int = 256
    target_metrics: bool = False  # serve the targets' Prometheus metrics (``metrics_url``)


class Stack:
    """redis-server, ``pairs`` × (draft, SSD target) and a gateway in front, as child processes.

    Names: ``redis``, ``draft0``, ``target0``, ``draft1``, ``target1`` …, ``gateway``. The public
    endpoint is ``endpoint`` (gRPC) and ``http_url`` (OpenAI HTTP, ``/metrics``)."""

    def __init__(self, spec: StackSpec):
        self.spec = spec
        spec.log_dir.mkdir(parents=True, exist_ok=True)
        python = [sys.executable, "-m", "saguaro.cli"]
        limits = ["--max-num-seqs", str(spec.max_num_seqs)]
        if spec.max_model_len:
            limits += ["--max-model-len", str(spec.max_model_len)]
        engine = ["--kv-cache-bytes", str(spec.kv_cache_bytes), *limits]
        speculation = ["--k", str(spec.k), "--fan-out", str(spec.fan_out)]
        self.services: dict[str, Service] = {}
        self.metrics_ports: dict[str, int] = {}
        redis_url = None
        if spec.redis:
            binary = shutil.which("redis-server")
            if binary is None:
                raise RuntimeError("redis-server is not installed: run scripts/setup (apt-get install redis-server)")
            port = free_port()
            redis_url = f"redis://127.0.0.1:{port}/0"
            self._add("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(spec.log_dir)], port)
        targets = []
        for i in range(spec.pairs):
            draft_port, target_port = free_port(), free_port()
            metrics_port = free_port() if spec.target_metrics else 0
            self.metrics_ports[f"target{i}"] = metrics_port
            self._add(f"draft{i}", [*python, "draft", "--model", spec.draft_model, "--port", str(draft_port),
                                    "--metrics-port", "0", *engine, *speculation], draft_port)
            target_engine = ["--kv-cache-bytes", str(spec.target_kv_cache_bytes or spec.kv_cache_bytes), *limits]
            self._add(f"target{i}", [*python, "target", "--model", spec.target_model, "--mode", "ssd",
                                     "--draft-address", f"127.0.0.1:{draft_port}", "--wait-for-draft", "120",
                                     "--draft-timeout", str(spec.draft_timeout_s), "--port", str(target_port),
                                     "--metrics-port", str(metrics_port), *target_engine, *speculation],
                      target_port)
            targets.append(f"127.0.0.1:{target_port}")
        grpc_port, self.http_port = free_port(), free_port()
        self._add("gateway", [*python, "gateway", "--port", str(grpc_port), "--http-port", str(self.http_port),
                              "--targets", *targets, "--max-queue", str(spec.max_queue),
                              *(["--redis-url", redis_url] if redis_url else [])], grpc_port)
        self.endpoint = f"127.0.0.1:{grpc_port}"
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.redis_url = redis_url

    def _add(self, name: str, cmd: list[str], port: int) -> None:
        self.services[name] = Service(name, cmd, f"127.0.0.1:{port}", self.spec.log_dir / f"{name}.log")

    def names(self, kind: str) -> list[str]:
        return [n for n in self.services if role(n) == kind]

    def start(self, timeout: float = 180.0) -> Stack:
        """Start everything at once (they load in parallel), then wait until the gateway serves
        through every target."""
        deadline = time.monotonic() + timeout
        try:
            for service in self.services.values():
                service.start()
            for service in self.services.values():
                service.wait_ready(deadline)
            self.wait_serving(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_serving(self, deadline: float) -> None:
        """Until the gateway reports every live target healthy, and every live target whose
        draft lives has it connected again (a killed service stays down unless restarted)."""
        from saguaro.client import Client, ServiceError

        pairs = [(self.services[f"target{i}"], self.services[f"draft{i}"]) for i in range(self.spec.pairs)]
        live = [(t, d.alive()) for t, d in pairs if t.alive()]
        want = f"{len(live)} of {self.spec.pairs} targets healthy"
        clients = [(Client(t.address, timeout=10), draft) for t, draft in live]
        gateway = Client(self.endpoint, timeout=10)
        try:
            while True:
                try:
                    drafts = all(c.health(timeout=2)["draft_connected"] for c, draft in clients if draft)
                    if drafts and gateway.health(timeout=2)["message"] == want:
                        return
                except ServiceError:
                    pass
                for name, service in self.services.items():
                    if service.starts and not service.alive() and service.proc.returncode != -signal.SIGKILL:
                        raise RuntimeError(f"{name} exited ({service.proc.returncode}); see {service.log_path}:\n"
                                           f"{service.tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the stack did not serve again in time ({want}?); logs in {self.spec.log_dir}")
                time.sleep(0.1)
        finally:
            for client, _ in clients:
                client.close()
            gateway.close()

    def targets(self) -> list[Service]:
        return [self.services[n] for n in self.names("target")]

    def restart(self, name: str, timeout: float = 120.0) -> None:
        """Start a killed service again with the same command line (a pod restart) and wait until
        the whole stack serves again."""
        deadline = time.monotonic() + timeout
        self.services[name].kill()
        self.services[name].start().wait_ready(deadline)
        self.wait_serving(deadline)

    def metrics_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.metrics_ports[name]}/metrics"

    def pids(self) -> dict[str, int]:
        return {name: s.pid for name, s in self.services.items() if s.alive()}

    def stop(self) -> None:
        for name in ("gateway", *self.names("target"), *self.names("draft"), "redis"):
            if name in self.services:
                self.services[name].stop()


def prompt_pool(count: int, vocab_size: int, seed: int, min_len: int = 4, max_len: int = 40) -> list[list[int]]:
    """Seeded prompts of token ids (3 .. vocab: no special ids) of varied lengths."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab_size) for _ in range(rng.randint(min_len, max_len))] for _ in range(count)]


def tiny_pair(root: Path) -> tuple[str, str]:
    """The test suite's tiny random Llama and a perturbed copy as its draft (partial acceptance),
    built in ``root``: benchmarks without model folders run on these."""
    from saguaro.tiny_models import build_tiny_model, perturbed_copy

    target = build_tiny_model(root / "target", family="llama")
    return str(target), str(perturbed_copy(target, root / "draft", noise=0.05))


def reference_outputs(model_dir: str, prompts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Target-only greedy tokens (the in-process AR engine, no draft), computed once."""
    from saguaro import LLM, SamplingParams

    llm = LLM(model_dir, kv_cache_bytes=64 << 20, max_num_seqs=16, show_progress=False)
    return [o.token_ids for o in llm.generate([list(p) for p in prompts], SamplingParams(max_tokens=max_tokens))]


@dataclass
class Workload:
    prompts: list[list[int]]
    expected: list[list[int]]  # reference tokens per prompt
    max_tokens: int


@dataclass
class Outcome:
    """One request as the client saw it."""

    prompt: int  # index into the workload's prompts
    kind: str  # one of OUTCOMES
    tokens: int  # tokens streamed
    started_s: float  # since the load started
    latency_s: float
    ttft_s: float | None  # None: no token arrived
    finish_reason: str | None = None
    error: str | None = None  # "CODE: message" of a raised error, or the final message's error
    fallback_rounds: int = 0  # rounds the target decoded without its draft (draft down or late)


def judge(received: Sequence[int], expected: Sequence[int], finish_reason: str | None, error_code: str | None) -> str:
    """Which of OUTCOMES a request is: ``finish_reason`` set when the stream ended with a final
    message, ``error_code`` when the call raised."""
    received, expected = list(received), list(expected)
    if received != expected[:len(received)]:
        return "corrupted"  # a wrong, repeated or skipped token: what must never happen
    if finish_reason in ("stop", "length"):
        return "completed" if received == expected else "corrupted"  # cut short or run long, yet "finished"
    if error_code in RETRYABLE_CODES and not received:
        return "failed_retryable"
    return "failed"


class LoadGenerator:
    """``concurrency`` clients, each sending one streaming greedy request after another (seeded
    prompt choice) to ``endpoint`` until ``stop`` (or ``requests`` were sent: then ``wait``);
    every request is judged against the reference.

    Runs on its own thread with its own event loop (the async SDK), so the caller is free to
    inject faults meanwhile."""

    def __init__(self, endpoint: str, workload: Workload, concurrency: int, seed: int = 0,
                 request_timeout_s: float = 120.0, retries: int = 8, retry_backoff_s: float = 0.2,
                 max_retry_delay_s: float = 1.0, pause_after_failure_s: float = 0.2, requests: int | None = None):
        self.endpoint = endpoint
        self.requests = requests
        self._sent = 0
        self.workload = workload
        self.concurrency = concurrency
        self.seed = seed
        self.client_options = dict(timeout=request_timeout_s, retries=retries, retry_backoff_s=retry_backoff_s,
                                   max_retry_delay_s=max_retry_delay_s)
        self.pause_after_failure_s = pause_after_failure_s
        self.outcomes: list[Outcome] = []
        self.started = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self) -> LoadGenerator:
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stop(self, timeout: float = 180.0) -> list[Outcome]:
        """No new requests; wait (at most ``timeout``) for the running ones to end. A request
        still running after that is a hang: raised as an error."""
        self._stop.set()
        return self.wait(timeout)

    def wait(self, timeout: float = 180.0) -> list[Outcome]:
        """Wait (at most ``timeout``) until the ``requests`` were sent and have ended."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"load: requests still running after {timeout:.0f} s more (a hang)")
        if self._error is not None:
            raise self._error
        return self.outcomes

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop()
            self._error = exc

    async def _main(self) -> None:
        from saguaro.client import AsyncClient

        async with AsyncClient(self.endpoint, **self.client_options) as client:
            await asyncio.gather(*(self._worker(client, random.Random(f"{self.seed}:{i}"))
                                   for i in range(self.concurrency)))

    async def _worker(self, client, rng: random.Random) -> None:
        while not self._stop.is_set() and (self.requests is None or self._sent < self.requests):
            self._sent += 1  # one event loop: no lock needed
            outcome = await send(client, self.workload, rng.randrange(len(self.workload.prompts)), self.started)
            self.outcomes.append(outcome)
            if outcome.kind != "completed":
                await asyncio.sleep(self.pause_after_failure_s)  # do not spin while a service is down

async def send(client, workload: Workload, index: int, epoch: float) -> Outcome:
    """One streaming greedy request of prompt ``index`` through ``client`` (an AsyncClient), judged."""
    from saguaro.client import ServiceError

    prompt, expected = workload.prompts[index], workload.expected[index]
    started = time.monotonic()
    ttft = None
    finish, code, error, fallback = None, None, None, 0
    stream = client.stream(prompt, max_tokens=workload.max_tokens, stream_tokens_individually=True)
    try:
        async for _delta in stream:
            if ttft is None:
                ttft = time.monotonic() - started
        finish = stream.result.finish_reason
        fallback = stream.result.stats.get("fallback_rounds", 0)
        if finish not in ("stop", "length"):
            error = stream.result.get("error_message") or finish
    except ServiceError as exc:
        code, error = exc.code, f"{exc.code}: {exc}"
    received = list(stream.token_ids)
    return Outcome(index, judge(received, expected, finish, code), len(received), started - epoch,
                   time.monotonic() - started, ttft, finish, error, fallback)


def probe(endpoint: str, workload: Workload, index: int = 0, **client_options) -> Outcome:
    """One request on a fresh connection: does the stack serve (exactly)?"""
    from saguaro.client import AsyncClient

    async def main() -> Outcome:
        async with AsyncClient(endpoint, **client_options) as client:
            return await send(client, workload, index, time.monotonic())

    return asyncio.run(main())


def scrape_metric(url: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` (with these labels) at a Prometheus ``/metrics`` URL."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def counts(outcomes: Sequence[Outcome]) -> dict[str, int]:
    out = {kind: 0 for kind in OUTCOMES}
    for outcome in outcomes:
        out[outcome.kind] += 1
    return out


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(outcomes: Sequence[Outcome], seconds: float) -> dict:
    """Counts, throughput and latency percentiles of a run (latencies of completed requests)."""
    done = [o for o in outcomes if o.kind == "completed"]
    latencies = [o.latency_s for o in done]
    ttfts = [o.ttft_s for o in done if o.ttft_s is not None]
    tokens = sum(o.tokens for o in done)
    return {
        **counts(outcomes), "requests": len(outcomes), "tokens": tokens, "seconds": round(seconds, 1),
        "requests_per_s": round(len(done) / seconds, 2) if seconds else None,
        "tokens_per_s": round(tokens / seconds, 1) if seconds else None,
        "latency_p50_s": percentile(latencies, 0.5), "latency_p99_s": percentile(latencies, 0.99),
        "ttft_p50_s": percentile(ttfts, 0.5), "ttft_p99_s": percentile(ttfts, 0.99),
    }


class RssSampler:
    """Samples the resident memory of the stack's processes (and this one) every ``interval_s``;
    keeps the first, peak and last value per service name (across restarts)."""

    def __init__(self, stack: Stack, interval_s: float = 0.5):
        self.stack = stack
        self.interval_s = interval_s
        self.first: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        for name, pid in {**self.stack.pids(), "client": os.getpid()}.items():
            rss = rss_bytes(pid)
            if rss:
                self.first.setdefault(name, rss)
                self.peak[name] = max(self.peak.get(name, 0), rss)
                self.last[name] = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def stop(self) -> dict[str, dict[str, float]]:
        """MiB per service: first, peak and last sample."""
        self._stop.set()
        self._thread.join()
        self.sample()
        mib = lambda b: round(b / (1 << 20), 1)
        return {n: {"first_mib": mib(self.first[n]), "peak_mib": mib(self.peak[n]), "last_mib": mib(self.last[n])}
                for n in self.peak}


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


def write_report(path: str | os.PathLike, key: str, value: dict) -> None:
    """Merge ``{key: value}`` into the JSON object at ``path`` (created if missing)."""
    target = Path(path)
    data = json.loads(target.read_text()) if target.is_file() and target.stat().st_size else {}
    data[key] = value
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
