"""Streaming greedy requests through the gateway, each judged token by token against the reference.

Outcomes (docs/reliability.md): ``completed``, ``failed_retryable`` (a retryable error before the
first token), ``failed`` (anything else; never acceptable) and ``corrupted`` (a wrong, missing or
repeated token, or a stream that "finished" short or long).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from saguaro_loadtest.workload import Workload

OUTCOMES = ("completed", "failed_retryable", "failed", "corrupted")
# Refused before any token with these, a request was not served: sending it again is safe.
RETRYABLE_CODES = {"UNAVAILABLE", "RESOURCE_EXHAUSTED"}


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
            error = stream.result.error_message or finish
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
