"""Speculation settings of one target<->draft session, agreed at handshake."""

from __future__ import annotations

from dataclasses import dataclass, field

from saguaro.speculative.fanout import uniform_fan_out, validate_fan_out
from saguaro.v1 import speculation_pb2 as pb

# Bounds on what a handshake may ask for: K and M size every per-round buffer (K x M tree tokens
# per sequence), so an unbounded request (K = 2^32 - 1 is a valid uint32) must be refused up
# front instead of allocating lists or KV scratch of that size.
MAX_LOOKAHEAD = 64
MAX_BUDGET = 1024


@dataclass
class DraftSettings:
    """K, fan-out lists (hit and miss, equal sums M), backup policy, Saguaro C, wire dtype."""

    k: int = 4
    fan_out: int = 2
    fan_out_hit: list[int] = field(default_factory=list)
    fan_out_miss: list[int] = field(default_factory=list)
    backup_policy: int = pb.BACKUP_POLICY_JIT
    jit_max_batch_size: int = 4
    downweight: float = 1.0
    probs_dtype: int = pb.DTYPE_FLOAT32
    fan_out_policy: int = pb.FAN_OUT_POLICY_LIST
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.k <= MAX_LOOKAHEAD:
            raise ValueError(f"K (lookahead) must be between 1 and {MAX_LOOKAHEAD}, got {self.k}")
        self.fan_out_hit = validate_fan_out(self.fan_out_hit or uniform_fan_out(self.k, self.fan_out), self.k)
        self.fan_out_miss = validate_fan_out(self.fan_out_miss or list(self.fan_out_hit), self.k)
        if sum(self.fan_out_hit) != sum(self.fan_out_miss):
            raise ValueError(
                f"hit and miss fan-out lists must have equal sums (the budget M), got "
                f"{sum(self.fan_out_hit)} and {sum(self.fan_out_miss)}"
            )
        if self.budget > MAX_BUDGET:
            raise ValueError(f"the fan-out budget M (branches per sequence) must be at most {MAX_BUDGET}, "
                             f"got {self.budget}")
        if not 0 < self.downweight <= 1:
            raise ValueError(f"Saguaro downweight C must be in (0, 1], got {self.downweight}")

    @property
    def budget(self) -> int:
        """M: branches per sequence."""
        return sum(self.fan_out_hit)

    @property
    def geometric(self) -> bool:
        return self.fan_out_policy == pb.FAN_OUT_POLICY_GEOMETRIC

    def to_proto(self) -> pb.SpeculationConfig:
        config = pb.SpeculationConfig(
            lookahead_k=self.k,
            fan_out=self.fan_out,
            fan_out_budget=self.budget,
            fan_out_list_hit=self.fan_out_hit,
            fan_out_list_miss=self.fan_out_miss,
            backup_policy=self.backup_policy,
            jit_max_batch_size=self.jit_max_batch_size,
            probs_dtype=self.probs_dtype,
            fan_out_policy=self.fan_out_policy,
        )
        if self.downweight != 1.0:
            config.saguaro_downweight = self.downweight
        return config

    @classmethod
    def from_proto(cls, config: pb.SpeculationConfig, seed: int = 0) -> "DraftSettings":
        """Unknown enum values (a newer peer's) count as the zero value, as docs/protocol.md §3 says."""
        return cls(
            k=config.lookahead_k,
            fan_out=config.fan_out or 1,
            fan_out_hit=list(config.fan_out_list_hit),
            fan_out_miss=list(config.fan_out_list_miss),
            backup_policy=_known(config.backup_policy, pb.BackupPolicy) or pb.BACKUP_POLICY_JIT,
            jit_max_batch_size=config.jit_max_batch_size or 4,
            downweight=config.saguaro_downweight if config.HasField("saguaro_downweight") else 1.0,
            probs_dtype=_known(config.probs_dtype, pb.DType) or pb.DTYPE_FLOAT32,
            fan_out_policy=_known(config.fan_out_policy, pb.FanOutPolicy) or pb.FAN_OUT_POLICY_LIST,
            seed=seed,
        )


def _known(value: int, enum) -> int:
    """``value`` if ``enum`` (a protobuf enum wrapper) defines it, else 0 (UNSPECIFIED)."""
    return value if value in enum.values() else 0
