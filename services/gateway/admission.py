"""Admission control: a bounded queue of requests waiting for their first token, and a bound
on the streams each API key holds open.

The gateway's queue is every request it admitted that has not received a token yet (waiting
for a target, in a target's prefill queue, or in prefill). Streaming requests leave it at their
first token, so long generations do not count against it. When it is full, a request is
refused at once with 429 / RESOURCE_EXHAUSTED and a ``Retry-After``, instead of waiting
without bound: the client (or its load balancer) retries, later or elsewhere.

The queue protects the gateway as a whole but not one tenant from another: a client holding
many long streams keeps the targets' batch slots and KV cache for as long as they run.
``StreamLimit`` caps the requests in flight per API key, arrival to last byte, with the same
429 / RESOURCE_EXHAUSTED and ``Retry-After``.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from saguaro.services.gateway.errors import GatewayError, invalid
from saguaro.services.gateway.metrics import GatewayMetrics


class Ticket:
    """One admitted request's place in the queue; ``leave`` is idempotent."""

    def __init__(self, admission: "Admission"):
        self._admission = admission
        self._queued = True

    def leave(self) -> None:
        if self._queued:
            self._queued = False
            self._admission._left()


class Admission:
    def __init__(self, max_queue: int, retry_after_s: int, metrics: GatewayMetrics):
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.metrics = metrics
        self.queued = 0

    def admit(self) -> Ticket:
        return self.admit_many(1)[0]

    def admit_many(self, count: int) -> list[Ticket]:
        """Places for ``count`` upstream requests (an HTTP request's prompts x ``n``), all or none:
        each choice costs a target as much as a request of its own, so ``n`` must not get past the
        queue's bound."""
        if count > max(self.max_queue, 1):  # (a single request meets the 429 below)
            raise invalid(f"this request needs {count} upstream requests (prompts x n), more than the gateway's queue "
                          f"holds (--max-queue {self.max_queue}); lower n or send fewer prompts", "n")
        if self.queued + count > self.max_queue:
            raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the gateway is at capacity: {self.queued} requests are waiting for their first token "
                               f"(--max-queue {self.max_queue}); retry after {self.retry_after_s} s",
                               retry_after=self.retry_after_s)
        self.queued += count
        self.metrics.queued.set(self.queued)
        return [Ticket(self) for _ in range(count)]

    def _left(self) -> None:
        self.queued -= 1
        self.metrics.queued.set(self.queued)


def _nothing() -> None:
    pass


class StreamLimit:
    """At most ``limit`` upstream streams in flight per API key (0: no limit). Everything runs on
    the gateway's event loop, so plain counters suffice."""

    def __init__(self, limit: int, retry_after_s: int):
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.open: dict[str, int] = {}  # API key -> streams in flight

    def acquire(self, key: str | None, streams: int = 1) -> Callable[[], None]:
        """Count ``streams`` (an HTTP request's prompts x ``n``) against ``key``, or refuse the request;
        returns the function that gives them back (idempotent). ``key`` None: no API keys."""
        if not self.limit or key is None:
            return _nothing
        if streams > self.limit:
            raise invalid(f"this request needs {streams} streams (prompts x n), more than the {self.limit} concurrent "
                          f"streams an API key may hold (--max-streams-per-key {self.limit}); send fewer at a time",
                          "prompt")
        held = self.open.get(key, 0)
        if held + streams > self.limit:
            raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"this API key has {held} streams in flight and may hold at most {self.limit} at once "
                               f"(--max-streams-per-key {self.limit}); retry after {self.retry_after_s} s, or when "
                               "one of them ends", retry_after=self.retry_after_s)
        self.open[key] = held + streams
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            left = self.open[key] - streams
            if left:
                self.open[key] = left
            else:
                del self.open[key]

        return release
