"""Per-target circuit breaker: stop sending requests to a pod that keeps failing.

closed --(``failures`` consecutive failures)--> open --(``cooldown_s``)--> half-open
half-open lets exactly one trial request through: success closes, failure opens again (and
doubles the cooldown, up to ``max_cooldown_s``). A successful Health probe counts as success,
so a pod that comes back is used again without waiting for a trial request.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.IntEnum):
    """Values exported by the ``saguaro_gateway_target_circuit_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    def __init__(self, failures: int = 3, cooldown_s: float = 5.0, max_cooldown_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[BreakerState], None] | None = None):
        self.threshold = failures
        self.base_cooldown_s = cooldown_s
        self.max_cooldown_s = max_cooldown_s
        self.clock = clock
        self.on_change = on_change
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._cooldown_s = cooldown_s
        self._opened_at = 0.0
        self._trial_out = False

    @property
    def state(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self.clock() - self._opened_at >= self._cooldown_s:
            self._set(BreakerState.HALF_OPEN)
            self._trial_out = False
        return self._state

    def allows(self) -> bool:
        """Whether a request may be sent now (does not reserve the half-open trial)."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial_out)

    def acquire(self) -> None:
        """Called when a request is actually sent: in half-open it takes the one trial slot."""
        if self.state is BreakerState.HALF_OPEN:
            self._trial_out = True

    def success(self) -> None:
        self._failures = 0
        self._cooldown_s = self.base_cooldown_s
        self._trial_out = False
        if self._state is not BreakerState.CLOSED:
            self._set(BreakerState.CLOSED)

    def failure(self) -> None:
        self._failures += 1
        state = self.state
        if state is BreakerState.HALF_OPEN:
            self._cooldown_s = min(self._cooldown_s * 2, self.max_cooldown_s)
            self._open()
        elif state is BreakerState.CLOSED and self._failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self._opened_at = self.clock()
        self._trial_out = False
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        self._state = state
        if self.on_change is not None:
            self.on_change(state)
