"""Admission control: a bounded queue of requests waiting for their first token.

The gateway's queue is every request it admitted that has not received a token yet (waiting
for a target, in a target's prefill queue, or in prefill). Streaming requests leave it at their
first token, so long generations do not count against it. When it is full, a request is
refused at once with 429 / RESOURCE_EXHAUSTED and a ``Retry-After``, instead of waiting
without bound: the client (or its load balancer) retries, later or elsewhere.
"""

from __future__ import annotations

import grpc

from saguaro.services.gateway.errors import GatewayError
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
        if self.queued >= self.max_queue:
            raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the gateway is at capacity: {self.queued} requests are waiting for their first token "
                               f"(--max-queue {self.max_queue}); retry after {self.retry_after_s} s",
                               retry_after=self.retry_after_s)
        self.queued += 1
        self.metrics.queued.set(self.queued)
        return Ticket(self)

    def _left(self) -> None:
        self.queued -= 1
        self.metrics.queued.set(self.queued)
