"""Emulated accelerator timings for benchmarks on CPU-only machines.

SSD's advantage comes from overlapping the draft's work with the target's verification, so it
depends on the *ratio* of their step times. On a CPU the tiny benchmark models have the wrong
ratio (and the wrong absolute times). A profile pads every target forward and every draft
forward (JIT step, glue, one batched tree step) to a fixed duration with a sleep — real tokens
and real protocol, accelerator-like costs. A forward that takes longer than its pad is not
shortened, so an overloaded CPU shows up as a slower result, never a flattering one.
"""

from __future__ import annotations

import time

# seconds per forward: (target decode/verify, draft step)
PROFILES: dict[str, tuple[float, float]] = {
    # roughly a 70B target tensor-parallel on 4 H100s with a 1B draft on a fifth
    "h100-70b-1b": (0.015, 0.002),
}


def pad_to(deadline: float) -> None:
    """Sleep until ``deadline`` (perf_counter seconds); return at once if it has passed."""
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)
