"""Speculation statistics: what a request reports about its rounds, and how a round's cache
lookups are counted.

``SpecStats`` is the only per-request record of speculation; the target's engine fills it after
each round (services/target/round.py) and the request's reply carries it as JSON.
``CacheLookups`` is the one place where proposals become hit, miss and backup counts, read by
both a request's stats and the service's round metrics (docs/speculation.md, "One round" and
"Backup policy").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from saguaro.speculative.backup import Backup


class Served(Protocol):
    """How the draft served a row: from its cache (``hit``) or by a backup after a miss."""

    hit: bool
    backup: Backup


@dataclass(frozen=True)
class CacheLookups:
    """Cache hits and misses of some proposals, and the backups that served the misses."""

    hits: int = 0
    misses: int = 0
    jit: int = 0
    fast: int = 0

    @classmethod
    def of(cls, proposals: Iterable[Served]) -> CacheLookups:
        hits = misses = jit = fast = 0
        for p in proposals:
            hits += p.hit
            misses += not p.hit
            jit += p.backup == Backup.JIT
            fast += p.backup == Backup.FAST
        return cls(hits, misses, jit, fast)


@dataclass
class SpecStats:
    """What a request reports about its speculative rounds."""

    mode: str = "ar"
    transport: str = "none"
    rounds: int = 0
    spec_rounds: int = 0
    tokens_from_rounds: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    cache_hits: int = 0
    cache_misses: int = 0
    backups_jit: int = 0
    backups_fast: int = 0
    ar_fallbacks: int = 0  # times the request lost its draft and fell back to plain decoding
    fallback_rounds: int = 0
    policy_rounds: int = 0  # rounds the governor decoded plainly because speculation did not pay
    sync_rounds: int = 0  # SSD deployment: rounds the governor ran as synchronous SD (it beat SSD here)
    draft_time_s: float = 0.0  # waiting for the draft's reply (critical path)
    verify_time_s: float = 0.0
    draft_build_time_s: float = 0.0  # the draft's cache building it reported (off the critical path)
    in_fallback: bool = field(default=False, repr=False)

    def record_round(self, accepted: int | None, committed: int, k: int) -> None:
        """``accepted`` is None for a round that ran without a proposal (AR/fallback)."""
        self.rounds += 1
        self.tokens_from_rounds += committed
        if accepted is None:
            return
        self.spec_rounds += 1
        if len(self.accepted_per_position) < k:
            self.accepted_per_position.extend([0] * (k - len(self.accepted_per_position)))
        for i in range(accepted):
            self.accepted_per_position[i] += 1

    def record_lookups(self, lookups: CacheLookups) -> None:
        self.cache_hits += lookups.hits
        self.cache_misses += lookups.misses
        self.backups_jit += lookups.jit
        self.backups_fast += lookups.fast

    def record_fallback(self) -> None:
        """A round this request meant to speculate ran without a proposal (draft down, late, or
        unable to serve the row); consecutive such rounds are one fallback."""
        self.ar_fallbacks += not self.in_fallback
        self.in_fallback = True
        self.fallback_rounds += 1

    def to_json(self) -> dict:
        out = asdict(self)
        del out["in_fallback"]
        out["tokens_per_round"] = self.tokens_from_rounds / self.rounds if self.rounds else 0.0
        lookups = self.cache_hits + self.cache_misses
        out["cache_hit_rate"] = self.cache_hits / lookups if lookups else 0.0
        out["acceptance_per_position"] = [a / self.spec_rounds for a in self.accepted_per_position] if self.spec_rounds else []
        return out
