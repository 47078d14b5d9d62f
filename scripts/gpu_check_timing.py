"""scripts/gpu-check's timing steps: calibrate the emulation's step-cost model on the device, and
measure our engine's AR throughput against transformers on the same model."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from gpu_check_plan import Shapes
from saguaro import LLM, SamplingParams
from saguaro.cache import BlockTable
from saguaro.config import EngineConfig
from saguaro.emulation import Profile, StepCost, profile_json
from saguaro.model_runner import CausalChunk, ModelRunner
from saguaro.tiny_models import build_tiny_model


# -- 5. calibration ----------------------------------------------------------------------------

def sized_model(work: Path, name: str, shape: dict, device: str) -> str:
    """A checkpoint of ``shape`` with random bf16 weights (small values, as trained weights are)."""
    out = work / name
    if (out / "config.json").exists():
        return str(out)
    if device == "cpu":  # the dry run's tiny shapes: transformers builds them in a moment
        build_tiny_model(out, family="llama", **shape, with_tokenizer=False, init_range=0.02)
    else:
        _random_checkpoint(out, shape)
    return str(out)


def _random_checkpoint(out: Path, shape: dict) -> None:
    """Like build_tiny_model, without building the model in transformers first (8B parameters
    in fp32 on the CPU would take minutes): config.json from it, weights written layer by layer."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    head_dim = shape.get("head_dim") or shape["hidden_size"] // shape["num_heads"]
    config = LlamaConfig(vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"],
                         intermediate_size=shape["intermediate_size"], num_hidden_layers=shape["num_layers"],
                         num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_kv_heads"],
                         head_dim=head_dim, max_position_embeddings=shape["max_position_embeddings"],
                         tie_word_embeddings=shape["tie_word_embeddings"], torch_dtype="bfloat16",
                         bos_token_id=0, eos_token_id=1, pad_token_id=2)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    q, kv = shape["num_heads"] * head_dim, shape["num_kv_heads"] * head_dim

    def rand(*size: int) -> torch.Tensor:
        return (torch.randn(*size, device="cuda", dtype=torch.bfloat16) * 0.02).cpu()

    weights = {"model.embed_tokens.weight": rand(v, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    if not shape["tie_word_embeddings"]:
        weights["lm_head.weight"] = rand(v, h)
    for layer in range(shape["num_layers"]):
        p = f"model.layers.{layer}."
        weights.update({
            p + "self_attn.q_proj.weight": rand(q, h), p + "self_attn.k_proj.weight": rand(kv, h),
            p + "self_attn.v_proj.weight": rand(kv, h), p + "self_attn.o_proj.weight": rand(h, q),
            p + "mlp.gate_proj.weight": rand(i, h), p + "mlp.up_proj.weight": rand(i, h),
            p + "mlp.down_proj.weight": rand(h, i),
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        })
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})


def time_steps(runner: ModelRunner, shapes: Shapes) -> dict[int, float]:
    """Median seconds of a decode step of n sequences, one token each on ``shapes.context``
    cached tokens, for every n of ``shapes.step_tokens``."""
    sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
    tables = []
    most = max(shapes.step_tokens)
    for _ in range(most):
        table = BlockTable()
        if not runner.blocks.ensure_slots(table, shapes.context + 1):
            break
        tables.append(table)
    times = {}
    for n in shapes.step_tokens:
        if n > len(tables):
            break
        chunks = [CausalChunk(t.blocks, shapes.context, [5]) for t in tables[:n]]
        runner.run_causal(chunks)  # capture (graphs) and warm-up
        samples = []
        for _ in range(shapes.repeats):
            sync()
            started = time.perf_counter()
            runner.run_causal(chunks)
            sync()
            samples.append(time.perf_counter() - started)
        times[n] = sorted(samples)[len(samples) // 2]
    return times


def fit_cost(times: dict[int, float]) -> StepCost:
    """T(n) = T0 * max(1, n / knee): T0 from the smallest steps, the knee where the line through
    the largest ones reaches T0 (None when no step grew past 10 % of T0)."""
    ns = sorted(times)
    base = sorted(times[n] for n in ns[:3])[len(ns[:3]) // 2]
    grown = [n for n in ns if times[n] > 1.1 * base]
    if not grown:
        return StepCost(base, None)
    knees = [n * base / times[n] for n in grown[-3:]]
    return StepCost(base, max(1, round(sorted(knees)[len(knees) // 2])))


def calibration(shapes: Shapes, work: Path, out: Path, profile_name: str, measured_on: dict):
    def step(findings: dict) -> bool:
        costs = {}
        for role in ("target", "draft"):
            model = sized_model(work, f"calibration-{role}", getattr(shapes, role), shapes.device)
            rows = {}
            for graphs_on in (True, False):
                runner = ModelRunner(EngineConfig(model=model, device=shapes.device, dtype="bfloat16",
                                                  max_num_seqs=max(shapes.step_tokens), block_size=16,
                                                  kv_cache_bytes=1 << 30, gpu_memory_utilization=0.5 if
                                                  shapes.device == "cuda" else None, max_model_len=2 * shapes.context,
                                                  show_progress=False, step_graphs=graphs_on))
                rows["graphs" if graphs_on else "eager"] = time_steps(runner, shapes)
                del runner
                if shapes.device == "cuda":
                    torch.cuda.empty_cache()
            costs[role] = fit_cost(rows["graphs"])
            findings[f"{role} ms per step by tokens (graphs)"] = {n: round(t * 1e3, 3) for n, t in rows["graphs"].items()}
            findings[f"{role} ms per step by tokens (eager)"] = {n: round(t * 1e3, 3) for n, t in rows["eager"].items()}
            findings[f"{role} host overhead a graph saves at 1 token, ms"] = round(
                (rows["eager"][1] - rows["graphs"][1]) * 1e3, 3)
            findings[f"{role} fit"] = f"T0 = {costs[role].base_s * 1e3:.3f} ms, knee = {costs[role].knee}"
        profile = Profile(costs["target"], costs["draft"])
        (out / f"{profile_name}.json").write_text(profile_json(profile, measured_on.get("gpu", shapes.device)))
        findings["profile"] = f"{profile_name}.json"
        return True
    return step


# -- 6. peer -----------------------------------------------------------------------------------

def peer(shapes: Shapes, work: Path):
    def step(findings: dict) -> bool:
        from transformers import AutoModelForCausalLM

        model = sized_model(work, "calibration-target", shapes.target, shapes.device)
        gen = torch.Generator().manual_seed(1)
        new, vocab = shapes.peer_tokens, shapes.target["vocab_size"]
        sync = torch.cuda.synchronize if shapes.device == "cuda" else (lambda: None)
        ours = LLM(model, device=shapes.device, dtype="bfloat16", max_num_seqs=max(shapes.peer_batches),
                   block_size=16, kv_cache_bytes=1 << 30, max_model_len=512, show_progress=False,
                   gpu_memory_utilization=0.4 if shapes.device == "cuda" else None)
        for batch in shapes.peer_batches:
            prompts = [torch.randint(3, min(1000, vocab), (32,), generator=gen).tolist() for _ in range(batch)]
            params = SamplingParams(max_tokens=new, ignore_eos=True)
            ours.generate(prompts, params)  # warm-up (and graph capture)
            sync()
            started = time.perf_counter()
            ours.generate(prompts, params)
            sync()
            findings[f"ours, batch {batch}, tok/s"] = round(batch * new / (time.perf_counter() - started), 1)
        del ours
        hf = AutoModelForCausalLM.from_pretrained(model, dtype=torch.bfloat16).to(shapes.device).eval()
        for batch in shapes.peer_batches:
            ids = torch.randint(3, min(1000, vocab), (batch, 32), generator=gen).to(shapes.device)
            kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=2)
            with torch.no_grad():
                hf.generate(ids, **kwargs)
                sync()
                started = time.perf_counter()
                hf.generate(ids, **kwargs)
                sync()
            findings[f"transformers, batch {batch}, tok/s"] = round(batch * new / (time.perf_counter() - started), 1)
        return True
    return step
