"""Micro-benchmark: each Triton kernel against its torch reference, on CUDA.

Times the public dispatches of ``saguaro.kernels`` with ``backend="triton"`` and
``backend="torch"`` on the same CUDA tensors (median of ``triton.testing.do_bench``, L2
flushed between runs) and prints µs, achieved GB/s and the fraction of the device's peak
DRAM bandwidth. "Bytes" is each op's compulsory traffic — every byte it must read or write,
once — with the formulas of docs/kernels.md, so both backends are measured against the same
yardstick. On a machine without CUDA it says so and exits 0.

    python bench/kernels_bench.py --batch 16 --context 4096
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch

from common import markdown_table


class Case(NamedTuple):
    name: str
    shape: str
    bytes: int
    flops: int
    run: Callable[[str], object]  # backend -> result


def peak_bandwidth_gbps() -> float:
    """Double data rate x bus width x memory clock, from the device properties."""
    props = torch.cuda.get_device_properties(0)
    return 2 * props.memory_bus_width / 8 * props.memory_clock_rate * 1e3 / 1e9


def on_device(meta, device: torch.device):
    """The metadata with its tensors moved (built on the host, as the engine does)."""
    moved = {f.name: getattr(meta, f.name) for f in dataclasses.fields(meta)}
    return type(meta)(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})


def store_kv_case(tokens: int, kv_heads: int, dim: int, dtype: torch.dtype, label: str) -> Case:
    from saguaro.attention import AttentionMetadata
    from saguaro.attention.kv_store import store_kv

    dev = torch.device("cuda")
    slots = tokens * 4
    k, v = (torch.randn(tokens, kv_heads, dim, device=dev, dtype=dtype) for _ in range(2))
    k_cache, v_cache = (torch.zeros(slots, kv_heads, dim, device=dev, dtype=dtype) for _ in range(2))
    slot_mapping = torch.randperm(slots, device=dev)[:tokens]
    one = torch.zeros(1, 1, dtype=torch.long, device=dev)
    meta = AttentionMetadata(slot_mapping, one, one, torch.ones(1, 1, dtype=torch.bool, device=dev), None)
    element = torch.finfo(dtype).bits // 8
    return Case(
        f"store_kv ({label})",
        f"T={tokens} Hkv={kv_heads} D={dim} {dtype}",
        4 * tokens * kv_heads * dim * element + 8 * tokens,
        0,
        lambda backend: store_kv(k, v, k_cache, v_cache, meta, backend=backend),
    )


def verify_case(batch: int, k: int, vocab: int) -> Case:
    from saguaro.speculative.distributions import proposal_probs
    from saguaro.speculative.fused_verify import fused_verify
    from saguaro.speculative.verification import draw_verification_uniforms

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(batch, k + 1, vocab, device=dev, generator=gen)
    q = proposal_probs(torch.randn(batch, k, vocab, device=dev, generator=gen), 1.0)
    tokens = torch.multinomial(q.view(-1, vocab), 1, generator=gen).view(batch, k)
    temperature = torch.where(torch.arange(batch, device=dev) % 2 == 0, 0.0, 1.0)  # greedy and sampled rows
    uniforms, residual = draw_verification_uniforms(batch, k, gen)
    return Case(
        "fused_verify",
        f"B={batch} K={k} V={vocab} fp32",
        4 * batch * (k + 2) * vocab + 8 * batch * (2 * k + 3),
        5 * batch * (k + 1) * vocab + 8 * batch * vocab,
        lambda backend: fused_verify(logits, tokens, q, temperature, uniforms, residual, backend=backend),
    )


def fork_case(batch: int, k: int, fan_out: int, vocab: int) -> Case:
    from saguaro.speculative.fork import fork_candidates

    dev = torch.device("cuda")
    glue = torch.randn(batch, k + 1, vocab, device=dev)
    tokens = torch.randint(0, vocab, (batch, k), device=dev)
    branches = fan_out * (k + 1)
    return Case(
        "fork_candidates",
        f"B={batch} K={k} F={fan_out} V={vocab} fp32",
        4 * batch * (k + 1) * vocab + 8 * batch * (2 * k + 1) + 16 * batch * branches,
        0,
        lambda backend: fork_candidates(glue, tokens, [fan_out] * (k + 1), backend=backend),
    )


def tree_attention_case(batch: int, k: int, fan_out: int, context: int, heads: int, kv_heads: int, dim: int) -> Case:
    from saguaro.attention.tree_attention import TreeStep, tree_attention
    from saguaro.services.draft.tree import tree_scratch_slots, tree_step_metadata

    dev, dtype, block_size = torch.device("cuda"), torch.bfloat16, 256
    branches, step = fan_out * (k + 1), k - 1
    per_seq = -(-tree_scratch_slots(context, k, branches) // block_size)
    tables = [list(range(b * per_seq, (b + 1) * per_seq)) for b in range(batch)]
    fork_depth = torch.arange(branches, device=dev).repeat(batch, 1) // fan_out
    meta, _ = tree_step_metadata(tables, [context] * batch, fork_depth.cpu(), k, step, block_size)
    meta = on_device(meta, dev)
    tree = TreeStep.build(tables, [context] * batch, fork_depth, k, step, block_size)
    tokens = batch * branches
    q = torch.randn(tokens, heads, dim, device=dev, dtype=dtype)
    new_k, new_v = (torch.randn(tokens, kv_heads, dim, device=dev, dtype=dtype) for _ in range(2))
    k_cache, v_cache = (torch.randn(batch * per_seq * block_size, kv_heads, dim, device=dev, dtype=dtype) for _ in range(2))
    visible = sum(context + int(j) + step + 2 for j in fork_depth[0].tolist()) * batch  # entries read, all branches
    unique = batch * (context + k + 1 + (step + 1) * branches)  # distinct cache entries per step
    return Case(
        "tree_attention",
        f"B={batch} M={branches} C={context} step={step} H={heads}/{kv_heads} D={dim} bf16",
        2 * unique * kv_heads * dim * 2 + 2 * tokens * heads * dim * 2 + 4 * tokens * kv_heads * dim * 2,
        4 * visible * heads * dim,
        lambda backend: tree_attention(q, new_k, new_v, k_cache, v_cache, meta, dim**-0.5, tree=tree, backend=backend),
    )


def cases(args: argparse.Namespace) -> Iterator[Case]:
    branches = args.fan_out * (args.k + 1)
    yield store_kv_case(args.batch * branches, 8, 128, torch.bfloat16, "tree step")
    yield store_kv_case(8192, 8, 128, torch.bfloat16, "prefill")
    yield verify_case(args.batch, args.k, args.vocab)
    yield fork_case(args.batch, args.k, args.fan_out, args.vocab)
    yield tree_attention_case(args.batch, args.k, args.fan_out, args.context, 32, 8, 64)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=7, help="lookahead K")
    parser.add_argument("--fan-out", type=int, default=3, help="uniform F per depth (M = F(K+1))")
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--context", type=int, default=4096, help="committed tokens C per sequence")
    parser.add_argument("--peak-gbps", type=float, default=None, help="override the peak DRAM bandwidth")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("CUDA is not available on this machine: nothing to time (the Triton kernels are "
              "tested on CPU through the interpreter: pytest tests/kernels).")
        return 0

    from triton.testing import do_bench

    from saguaro.kernels.dispatch import launch_counts

    peak = args.peak_gbps or peak_bandwidth_gbps()
    print(f"{torch.cuda.get_device_name(0)}, peak DRAM bandwidth {peak:.0f} GB/s")
    rows = []
    for case in cases(args):
        for backend in ("triton", "torch"):
            before = sum(launch_counts.values())
            us = do_bench(lambda: case.run(backend), warmup=25, rep=200, return_mode="median") * 1e3
            if backend == "triton" and sum(launch_counts.values()) == before:
                raise SystemExit(f"{case.name}: the Triton path did not launch a kernel")
            gbps = case.bytes / us / 1e3
            tflops = case.flops / us / 1e6
            rows.append([case.name, case.shape, backend, us, gbps, gbps / peak, tflops])
    print(markdown_table(["kernel", "shape", "backend", "µs", "GB/s", "of peak", "TFLOP/s"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
