"""Model and engine configuration.

The model config is read from a Hugging Face ``config.json`` ourselves (not through
``transformers.AutoConfig``) so the runtime does not depend on the installed transformers'
key conventions: both the older layout real checkpoints carry (``rope_theta`` +
``rope_scaling``) and the current one (``rope_parameters``) are accepted.
"""

from __future__ import annotations

import json
import math
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
        """Parse and check a config.json object; any bad value is a ModelLoadError naming its key."""
        if not isinstance(raw, dict):
            raise ModelLoadError(f"config.json must hold a JSON object, got {type(raw).__name__}")
        archs = raw.get("architectures") or []
        archs = archs if isinstance(archs, list) else [archs]
        arch = next((a for a in archs if isinstance(a, str) and a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ModelLoadError(
                f"unsupported architecture {archs or raw.get('model_type')!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
            )
        family = SUPPORTED_ARCHITECTURES[arch]
        hidden = _positive_int(raw, "hidden_size")
        heads = _positive_int(raw, "num_attention_heads")
        kv_heads = _positive_int(raw, "num_key_value_heads", heads)
        if heads % kv_heads:
            raise ModelLoadError(
                f"num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in eos_ids):
            raise ModelLoadError(f"eos_token_id must be a token id or a list of token ids, got {eos!r}")
        bos = raw.get("bos_token_id")
        if bos is not None and (isinstance(bos, bool) or not isinstance(bos, int)):
            raise ModelLoadError(f"bos_token_id must be a token id, got {bos!r}")
        torch_dtype = raw.get("torch_dtype") or raw.get("dtype")
        if torch_dtype is not None and not isinstance(torch_dtype, str):
            raise ModelLoadError(f"torch_dtype must be a string such as \"bfloat16\", got {torch_dtype!r}")
        return cls(
            architecture=arch,
            family=family,
            vocab_size=_positive_int(raw, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=_positive_int(raw, "intermediate_size"),
            num_layers=_positive_int(raw, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=_positive_int(raw, "head_dim", hidden // heads),
            rms_norm_eps=_positive_float(raw, "rms_norm_eps", 1e-6),
            max_position_embeddings=_positive_int(raw, "max_position_embeddings", 2048),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            rope=_parse_rope(raw),
            qk_norm=family == "qwen3",
            attention_bias=bool(raw.get("attention_bias", False)),
            bos_token_id=bos,
            eos_token_ids=eos_ids,
            torch_dtype=torch_dtype,
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
            raw = json.loads(cfg.read_bytes())
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8, or nested too deep
            raise ModelLoadError(f"{cfg} is not valid JSON: {str(exc)[:200]}") from None
        try:
            return cls.from_dict(raw)
        except ModelLoadError as exc:
            raise ModelLoadError(f"{cfg}: {exc}") from None


_REQUIRED = object()


def _number(raw: dict[str, Any], key: str, default: Any) -> Any:
    value = raw.get(key)
    if value is None:  # absent or null: the default (required keys have none)
        if default is _REQUIRED:
            raise ModelLoadError(f"config.json lacks the required key {key!r}")
        return default
    return value


def _positive_int(raw: dict[str, Any], key: str, default: Any = _REQUIRED) -> int:
    value = _number(raw, key, default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelLoadError(f"{key} must be a positive integer, got {value!r}")
    return value


def _positive_float(raw: dict[str, Any], key: str, default: Any = _REQUIRED) -> float:
    value = _number(raw, key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < math.inf:
        raise ModelLoadError(f"{key} must be a positive number, got {value!r}")
    return float(value)


def _parse_rope(raw: dict[str, Any]) -> RopeConfig:
    for key in ("rope_parameters", "rope_scaling"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ModelLoadError(f"{key} must be an object, got {raw[key]!r}")
    params = dict(raw.get("rope_parameters") or {})
    legacy = dict(raw.get("rope_scaling") or {})
    theta = _positive_float({"rope_theta": params.get("rope_theta", raw.get("rope_theta"))}, "rope_theta", 10000.0)
    scaling = params if params.get("rope_type", "default") != "default" else legacy
    rope_type = scaling.get("rope_type", scaling.get("type", "default")) or "default"
    if rope_type not in ("default", "llama3"):
        raise ModelLoadError(f"unsupported rope scaling type {rope_type!r}; supported: default, llama3")
    if rope_type == "default":
        return RopeConfig(theta=theta)
    rope = RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=_positive_float(scaling, "factor"),
        low_freq_factor=_positive_float(scaling, "low_freq_factor", 1.0),
        high_freq_factor=_positive_float(scaling, "high_freq_factor", 4.0),
        original_max_position_embeddings=_positive_int(scaling, "original_max_position_embeddings", 8192),
    )
    if rope.high_freq_factor <= rope.low_freq_factor:
        raise ModelLoadError(f"rope scaling: high_freq_factor ({rope.high_freq_factor}) must exceed low_freq_factor "
                             f"({rope.low_freq_factor})")
    return rope


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
    # The small steps (decode, verify, the draft's glue and tree) on fixed-shape buckets
    # (saguaro/step_graphs.py). None: on CUDA, where they replay captured CUDA graphs; False:
    # never (--enforce-eager); True: also on a CPU, where nothing is captured and the padded
    # steps run eagerly (tests and the GPU check's dry run exercise the same code there).
    step_graphs: bool | None = None
    seed: int = 0
    show_progress: bool = True
    # Benchmarks only: pad every device step to at least this long, to emulate an accelerator's
    # step time on a CPU (real tokens, realistic target/draft cost ratio); with a knee, a step of
    # n tokens costs emulate_forward_s * max(1, n / knee). See saguaro/emulation.py.
    emulate_forward_s: float | None = None
    emulate_knee_tokens: int | None = None
    tensor_parallel_size: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError):  # torch's message for "" or "gpu" says little
            raise ConfigError(f"unknown device {self.device!r}; use cpu or cuda[:N]") from None
        if device.type not in ("cpu", "cuda"):
            raise ConfigError(f"unsupported device {self.device!r}; use cpu or cuda[:N]")
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
        if not -(2**63) <= self.seed < 2**64:  # what torch.Generator.manual_seed takes
            raise ConfigError(f"seed must be between -2**63 and 2**64 - 1, got {self.seed}")
        if self.max_model_len is not None and self.max_model_len <= 0:
            raise ConfigError(f"max_model_len must be positive, got {self.max_model_len}")
        if self.emulate_forward_s is not None and not 0 <= self.emulate_forward_s < math.inf:
            raise ConfigError(f"emulate_forward_s must be a finite number >= 0, got {self.emulate_forward_s}")
        if self.emulate_knee_tokens is not None and not (isinstance(self.emulate_knee_tokens, int)
                                                         and self.emulate_knee_tokens > 0):
            raise ConfigError(f"emulate_knee_tokens must be a positive integer, got {self.emulate_knee_tokens!r}")
