"""Measured costs shared by the target's and the draft's speculation models.

Both sides size speculation per batch size from times they measure as they serve: the target
its lookahead and depth (services/target/lookahead.py), the draft its tree's branches
(services/draft/policy.py). They bucket batch sizes alike and read times that grow with a size
off the same kind of line, so the two models agree on what a batch size and a trend are.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ALPHA = 0.05  # weight of one observation in the moving averages of times and hit rates
FULL_WEIGHT = 20  # observations after which a size's time counts fully in its line


def ema(old: float | None, value: float, alpha: float = ALPHA) -> float:
    """An exponential moving average; the first value starts it."""
    return value if old is None else (1 - alpha) * old + alpha * value


def bucket_of(batch_size: int) -> int:
    """Batch sizes 1, 2, 3-4, 5-8, 9-16, ... share a bucket (the upper bound)."""
    return 1 << max(batch_size - 1, 0).bit_length()


@dataclass
class Line:
    """A time that grows with a size x (a lookahead, branches per row): one moving average per x
    measured, read off a straight line through them, each weighted by its observations (up to
    ``FULL_WEIGHT``), never falling with x. Work grows with the tokens on a CPU and is flat on a
    GPU below its knee; a falling line is noise."""

    by_x: dict[int, float] = field(default_factory=dict)
    count_by_x: dict[int, int] = field(default_factory=dict)

    def observe(self, x: int, seconds: float) -> None:
        self.by_x[x] = ema(self.by_x.get(x), seconds)
        self.count_by_x[x] = self.count_by_x.get(x, 0) + 1

    def at(self, x: int, per_unit_offset: float | None = None) -> float | None:
        """The time at ``x``; with one x measured: flat, or (``per_unit_offset`` = c) scaled as
        ``x + c`` units of work (a build of k tree steps and one glue step: c = 1). Never below
        0: read below the sizes measured, a steep line would otherwise predict a negative time
        (and a negative build budget is out of range on the wire)."""
        points = [(p, t, min(self.count_by_x[p], FULL_WEIGHT)) for p, t in sorted(self.by_x.items())]
        if not points:
            return None
        if len(points) == 1 and per_unit_offset is not None:
            p, t, _ = points[0]
            return t * (x + per_unit_offset) / (p + per_unit_offset)
        weight = sum(w for _, _, w in points)
        mean_x = sum(p * w for p, _, w in points) / weight
        mean_t = sum(t * w for _, t, w in points) / weight
        spread = sum(w * (p - mean_x) ** 2 for p, _, w in points)
        slope = sum(w * (p - mean_x) * (t - mean_t) for p, t, w in points) / spread if spread else 0.0
        return max(0.0, mean_t + max(0.0, slope) * (x - mean_x))
