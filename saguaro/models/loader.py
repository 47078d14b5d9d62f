"""Load a Hugging Face checkpoint folder (single or sharded safetensors) into ``CausalLM``.

Tensors are streamed one at a time from the safetensors files and copied into the fused
parameters, so peak memory stays near the model size. Every expected tensor must be found:
a checkpoint that lacks one is refused with its name rather than run with garbage.

A tensor-parallel rank reads only its shard of each tensor (``get_slice``: rows of the
column-parallel and vocabulary tensors, columns of the row-parallel ones), so a rank's load
memory and I/O scale with 1/size; ``CausalLM.bytes_loaded`` counts what was read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from saguaro.config import ModelConfig
from saguaro.errors import ModelLoadError
from saguaro.models.transformer import CausalLM
from saguaro.parallel.group import TensorParallelGroup

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

# (dim, start, stop, full length of dim): the part of a checkpoint tensor this rank reads; None: all
Source = tuple[int, int, int, int] | None


def checkpoint_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / s for s in shards]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ModelLoadError(f"{model_dir}: shards listed in {index.name} are missing: {', '.join(missing)}")
        return files
    single = model_dir / "model.safetensors"
    if single.is_file():
        return [single]
    found = sorted(model_dir.glob("*.safetensors"))
    if found:
        return found
    raise ModelLoadError(
        f"no weights in {model_dir}: expected model.safetensors or model.safetensors.index.json "
        "(PyTorch .bin checkpoints are not supported; convert them to safetensors)"
    )


class _Placement(NamedTuple):
    param: torch.Tensor
    rows: slice | None  # rows of ``param`` it fills (a part of a fused parameter); None: all
    source: Source
    key: str  # for the bookkeeping of expected tensors


def _target(model: CausalLM, name: str) -> _Placement | None:
    """Map a checkpoint tensor name to where (and which part of it) this rank loads it."""
    cfg, local, group = model.cfg, model.local_cfg, model.group
    rank = 0 if group is None else group.rank

    def shard(size: int, dim: int) -> Source:
        return None if group is None else (dim, rank * size, (rank + 1) * size, size * group.size)

    vocab = slice(0, model.vocab_stop - model.vocab_start)
    vocab_source = None if group is None else (0, model.vocab_start, model.vocab_stop, cfg.vocab_size)
    if name == "model.embed_tokens.weight":
        return _Placement(model.embed, vocab, vocab_source, "embed")
    if name == "model.norm.weight":
        return _Placement(model.final_norm, None, None, "final_norm")
    if name == "lm_head.weight":
        return None if cfg.tie_word_embeddings else _Placement(model.lm_head, vocab, vocab_source, "lm_head")
    match = _LAYER.match(name)
    if not match or int(match.group(1)) >= cfg.num_layers:
        return None
    layer = model.layers[int(match.group(1))]
    rest = match.group(2)
    q, kv, inter = layer.q_size, layer.kv_size, local.intermediate_size
    fused = {
        "self_attn.q_proj": (slice(0, q), shard(q, 0)),
        "self_attn.k_proj": (slice(q, q + kv), shard(kv, 0)),
        "self_attn.v_proj": (slice(q + kv, q + 2 * kv), shard(kv, 0)),
        "mlp.gate_proj": (slice(0, inter), shard(inter, 0)),
        "mlp.up_proj": (slice(inter, 2 * inter), shard(inter, 0)),
    }
    stem, _, kind = rest.rpartition(".")
    if stem in fused:
        if stem.startswith("mlp."):
            param = layer.gate_up_weight if kind == "weight" else None
        else:
            param = layer.qkv_weight if kind == "weight" else layer.qkv_bias
        return None if param is None else _Placement(param, *fused[stem], name)
    whole = {
        "input_layernorm.weight": (layer.input_norm, None),
        "post_attention_layernorm.weight": (layer.post_attn_norm, None),
        "self_attn.q_norm.weight": (layer.q_norm, None),
        "self_attn.k_norm.weight": (layer.k_norm, None),
        "self_attn.o_proj.weight": (layer.o_weight, shard(q, 1)),
        "mlp.down_proj.weight": (layer.down_weight, shard(inter, 1)),
    }
    if rest in whole:
        param, source = whole[rest]
        return None if param is None else _Placement(param, None, source, name)
    return None


def _read(handle, name: str, source: Source) -> torch.Tensor:
    """The tensor, or only this rank's rows / columns of it (nothing else is read)."""
    if source is None:
        return handle.get_tensor(name)
    dim, start, stop, full = source
    part = handle.get_slice(name)
    shape = part.get_shape()
    if len(shape) <= dim or shape[dim] != full:
        raise ModelLoadError(f"tensor {name} has shape {tuple(shape)}, config.json implies {full} along dim {dim}")
    return part[start:stop] if dim == 0 else part[:, start:stop]


def _expected_keys(model: CausalLM) -> set[str]:
    cfg = model.cfg
    keys = {"embed", "final_norm"} | (set() if cfg.tie_word_embeddings else {"lm_head"})
    per_layer = [
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "mlp.down_proj.weight",
    ]
    if cfg.qk_norm:
        per_layer += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    if cfg.attention_bias:
        per_layer += ["self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"]
    for i in range(cfg.num_layers):
        keys |= {f"model.layers.{i}.{p}" for p in per_layer}
    return keys


def load_model(
    model_dir: str | Path,
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    show_progress: bool = True,
    group: TensorParallelGroup | None = None,
) -> CausalLM:
    """Build the model (this rank's shard of it, with ``group``) on ``device`` and fill it from
    the checkpoint, with a progress bar."""
    model_dir = Path(model_dir)
    files = checkpoint_files(model_dir)
    with torch.device(device):
        model = CausalLM(cfg, dtype, max_positions, device, group)
    expected = _expected_keys(model)
    loaded: set[str] = set()
    with tqdm(desc=f"loading {model_dir.name}", unit="tensor", disable=not show_progress, leave=False) as bar:
        for path in files:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                for name in handle.keys():
                    target = _target(model, name)
                    bar.update(1)
                    if target is None:
                        continue
                    param, rows, source, key = target
                    tensor = _read(handle, name, source)
                    model.bytes_loaded += tensor.nbytes
                    dest = param.data if rows is None else param.data[rows]
                    if dest.shape != tensor.shape:
                        raise ModelLoadError(
                            f"{path.name}: tensor {name} has shape {tuple(tensor.shape)}, "
                            f"config.json implies {tuple(dest.shape)}"
                        )
                    dest.copy_(tensor.to(dtype))
                    loaded.add(key)
    missing = sorted(expected - loaded)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(f"checkpoint in {model_dir} lacks tensors: {shown}")
    return model.eval()
