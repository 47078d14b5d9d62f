"""Per-rank load memory of a tensor-parallel target: TP 1 vs TP 2 (or any sizes).

Each size runs in a fresh process (ru_maxrss is a high-water mark and never goes down). Every
rank reports the checkpoint bytes it read and its peak resident memory before and after loading
its weights; the KV cache is kept tiny so the weights dominate. The "load" column (peak after
minus peak before) is what loading cost that rank, including the safetensors pages it touched.
The last column is rank 0's batch-1 decode step time, to show what the per-forward command
and collectives cost on this host (on a CPU, TP is a correctness vehicle, not a speed-up).

    python bench/tp_memory.py                      # ../shared/models/pystdlib-llama/target, TP 1 and 2
    python bench/tp_memory.py --model DIR --sizes 1 2 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_MODELS, markdown_table, pin_threads

MIB = 1 << 20


def measure(model: Path, tp: int, steps: int = 64) -> dict:
    """One runner at ``tp`` ranks in this process: every rank's load report, decode ms/step."""
    from dataclasses import asdict

    from saguaro.cache import BlockTable
    from saguaro.config import EngineConfig
    from saguaro.model_runner import CausalChunk, ModelRunner

    runner = ModelRunner(EngineConfig(model=str(model), kv_cache_bytes=4 * MIB, max_model_len=256,
                                      show_progress=False, tensor_parallel_size=tp))
    try:
        loads = [asdict(load) for load in runner.rank.loads]
        tokens = list(range(3, 3 + 16 + steps))
        table = BlockTable()
        runner.blocks.allocate_prompt(table, tokens)
        runner.run_causal([CausalChunk(table.blocks, 0, tokens[:16])])
        start = time.perf_counter()
        for pos in range(16, 16 + steps):
            runner.run_causal([CausalChunk(table.blocks, pos, [tokens[pos]])])
        return {"loads": loads, "step_ms": (time.perf_counter() - start) / steps * 1000}
    finally:
        runner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODELS / "target")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    pin_threads(1)
    if args.child is not None:
        print(json.dumps(measure(args.model, args.child)))
        return
    rows = []
    for tp in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--model", str(args.model), "--child", str(tp)],
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.splitlines()[-1])
        for rank, load in enumerate(result["loads"]):
            before, after = load["peak_rss_before_bytes"], load["peak_rss_bytes"]
            step = round(result["step_ms"], 2) if rank == 0 else ""
            rows.append([tp, rank, load["bytes_read"] / MIB, before / MIB, after / MIB, (after - before) / MIB, step])
    print(f"model: {args.model}")
    print(markdown_table(["TP", "rank", "read (MiB)", "peak RSS before load (MiB)", "peak RSS after load (MiB)",
                          "load (MiB)", "decode ms/step (batch 1)"], rows))


if __name__ == "__main__":
    main()
