"""Load a Hugging Face checkpoint folder (single or sharded safetensors) into ``CausalLM``.

Tensors are streamed one at a time from the safetensors files and copied into the fused
parameters, so peak memory stays near the model size. Every expected tensor must be found:
a checkpoint that lacks one is refused with its name rather than run with garbage.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from saguaro.config import ModelConfig
from saguaro.errors import ModelLoadError
from saguaro.models.transformer import CausalLM

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


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


def _target(model: CausalLM, name: str) -> tuple[torch.Tensor, slice | None, str] | None:
    """Map a checkpoint tensor name to (parameter, row slice within it, key for bookkeeping)."""
    cfg = model.cfg
    if name == "model.embed_tokens.weight":
        return model.embed, None, "embed"
    if name == "model.norm.weight":
        return model.final_norm, None, "final_norm"
    if name == "lm_head.weight":
        return (None if cfg.tie_word_embeddings else (model.lm_head, None, "lm_head"))
    match = _LAYER.match(name)
    if not match or int(match.group(1)) >= cfg.num_layers:
        return None
    layer = model.layers[int(match.group(1))]
    rest = match.group(2)
    q, kv, inter = layer.q_size, layer.kv_size, cfg.intermediate_size
    fused = {
        "self_attn.q_proj": (slice(0, q)),
        "self_attn.k_proj": (slice(q, q + kv)),
        "self_attn.v_proj": (slice(q + kv, q + 2 * kv)),
    }
    stem, _, kind = rest.rpartition(".")
    if stem in fused:
        param = layer.qkv_weight if kind == "weight" else layer.qkv_bias
        return (None if param is None else (param, fused[stem], name))
    simple = {
        "input_layernorm.weight": layer.input_norm,
        "post_attention_layernorm.weight": layer.post_attn_norm,
        "self_attn.o_proj.weight": layer.o_weight,
        "self_attn.q_norm.weight": layer.q_norm,
        "self_attn.k_norm.weight": layer.k_norm,
        "mlp.down_proj.weight": layer.down_weight,
    }
    if rest in simple:
        return (None if simple[rest] is None else (simple[rest], None, name))
    if rest == "mlp.gate_proj.weight":
        return layer.gate_up_weight, slice(0, inter), name
    if rest == "mlp.up_proj.weight":
        return layer.gate_up_weight, slice(inter, 2 * inter), name
    return None


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
) -> CausalLM:
    """Build the model on ``device`` and fill it from the checkpoint, with a progress bar."""
    model_dir = Path(model_dir)
    files = checkpoint_files(model_dir)
    with torch.device(device):
        model = CausalLM(cfg, dtype, max_positions, device)
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
                    param, rows, key = target
                    tensor = handle.get_tensor(name)
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
