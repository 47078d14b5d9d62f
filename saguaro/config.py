"""Model and engine configuration.

The model config is read from a Hugging Face ``config.json`` ourselves (not through
``transformers.AutoConfig``) so the runtime does not depend on the installed transformers'
key conventions: both the older layout real checkpoints carry (``rope_theta`` +
``rope_scaling``) and the current one (``rope_parameters``) are accepted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from saguaro.errors import ConfigError, ModelLoadError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
}

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """Map a user-facing dtype name to a torch dtype, with a clear error otherwise."""
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        raise ConfigError(f"unsupported dtype {name}; use one of float32, bfloat16, float16")
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unsupported dtype {name!r}; use one of float32, bfloat16, float16"
        ) from None


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """The architecture facts the runtime needs, normalised across config layouts."""

    architecture: str
    family: str  # "llama" | "qwen3"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope: RopeConfig
    qk_norm: bool
    attention_bias: bool
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    torch_dtype: str | None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ModelConfig":
        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ModelLoadError(
                f"unsupported architecture {archs or raw.get('model_type')!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        family = SUPPORTED_ARCHITECTURES[arch]
        hidden = int(raw["hidden_size"])
        heads = int(raw["num_attention_heads"])
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=arch,
            family=family,
            vocab_size=int(raw["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(raw["intermediate_size"]),
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            rope=_parse_rope(raw),
            qk_norm=family == "qwen3",
            attention_bias=bool(raw.get("attention_bias", False)),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        )

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> "ModelConfig":
        path = Path(model_dir)
        if not path.is_dir():
            raise ModelLoadError(f"model folder not found: {path}")
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ModelLoadError(f"no config.json in model folder {path}")
        try:
            raw = json.loads(cfg.read_text())
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{cfg} is not valid JSON: {exc}") from None
        try:
            return cls.from_dict(raw)
        except KeyError as exc:
            raise ModelLoadError(f"{cfg} lacks the required key {exc.args[0]!r}") from None


def _parse_rope(raw: dict[str, Any]) -> RopeConfig:
    params = dict(raw.get("rope_parameters") or {})
    legacy = dict(raw.get("rope_scaling") or {})
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    scaling = params if params.get("rope_type", "default") != "default" else legacy
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in ("default", "llama3"):
        raise ModelLoadError(f"unsupported rope scaling type {rope_type!r}; supported: default, llama3")
    if rope_type == "default":
        return RopeConfig(theta=float(theta))
    return RopeConfig(
        theta=float(theta),
        rope_type=rope_type,
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling.get("low_freq_factor", 1.0)),
        high_freq_factor=float(scaling.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(scaling.get("original_max_position_embeddings", 8192)),
    )


@dataclass
class EngineConfig:
    """Knobs of one engine instance (one model on one device).

    ``kv_cache_bytes`` sizes the paged KV cache on CPU; on CUDA ``gpu_memory_utilization``
    (a fraction of free memory after loading weights) is used instead when it is set. Both are
    per rank under tensor parallelism (each rank caches only its KV heads).

    ``tensor_parallel_size`` > 1 shards the model over that many processes (ranks 0..N-1 on
    cuda:i..i+N-1 for device cuda:i, all on the CPU otherwise); see docs/parallelism.md.
    """

    model: str
    dtype: str = "auto"
    device: str = "cpu"
    block_size: int = 16
    kv_cache_bytes: int = 512 * 1024 * 1024
    gpu_memory_utilization: float | None = None
    max_num_seqs: int = 16
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    seed: int = 0
    show_progress: bool = True
    # Benchmarks only: pad every forward to at least this long, to emulate an accelerator's
    # step time on a CPU (real tokens, realistic target/draft cost ratio). See saguaro/emulation.py.
    emulate_forward_s: float | None = None
    tensor_parallel_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.block_size <= 0:
            raise ConfigError(f"block_size must be positive, got {self.block_size}")
        if self.max_num_seqs <= 0:
            raise ConfigError(f"max_num_seqs must be positive, got {self.max_num_seqs}")
        if self.max_num_batched_tokens <= 0:
            raise ConfigError(
                f"max_num_batched_tokens must be positive, got {self.max_num_batched_tokens}"
            )
        if self.tensor_parallel_size < 1:
            raise ConfigError(f"tensor_parallel_size must be at least 1, got {self.tensor_parallel_size}")
        if self.kv_cache_bytes <= 0:
            raise ConfigError(f"kv_cache_bytes must be positive, got {self.kv_cache_bytes}")
        if self.gpu_memory_utilization is not None and not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
