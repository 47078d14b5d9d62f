"""How a model's tensors split across tensor-parallel ranks (Megatron layout).

Column-parallel projections (q, k, v; gate, up) give each rank whole heads and an equal slice of
the intermediate dimension, so attention and the SiLU gate run locally; row-parallel ones (o,
down) then hold the matching input slice and produce partial sums. The vocabulary is cut into
equal padded shards instead of refusing: real vocabularies (e.g. 128,256 + added tokens, or an
odd test size) rarely divide the rank count, and zero rows cost nothing but a trimmed column.
Heads cannot be padded without changing the model, so a size that does not divide them is refused.
"""

from __future__ import annotations

from dataclasses import replace

from saguaro.config import ModelConfig
from saguaro.errors import ConfigError


def _split(total: int, size: int, name: str, why: str) -> int:
    if total % size:
        raise ConfigError(
            f"tensor_parallel_size {size} does not divide {name} ({total}): {why}; "
            f"use a tensor-parallel size that divides {total}"
        )
    return total // size


def shard_config(cfg: ModelConfig, size: int) -> ModelConfig:
    """The architecture one rank holds: its heads, KV heads, intermediate slice, padded vocab shard."""
    if size == 1:
        return cfg
    return replace(
        cfg,
        num_heads=_split(cfg.num_heads, size, "num_attention_heads", "each rank computes whole query heads"),
        num_kv_heads=_split(cfg.num_kv_heads, size, "num_key_value_heads",
                            "each rank must own whole KV heads (and the query heads that share them)"),
        intermediate_size=_split(cfg.intermediate_size, size, "intermediate_size",
                                 "each rank holds an equal slice of the MLP"),
        vocab_size=-(-cfg.vocab_size // size),
    )


def vocab_range(vocab_size: int, rank: int, size: int) -> tuple[int, int]:
    """Token ids [start, stop) whose embedding and LM-head rows live on ``rank``.

    Shards are ceil(V / size) rows; the last one ends at V and is zero-padded to that height.
    """
    rows = -(-vocab_size // size)
    start = min(rank * rows, vocab_size)
    return start, min(start + rows, vocab_size)
