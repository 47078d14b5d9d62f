"""Draft data parallelism: SSD with 1 vs 2 draft workers, side by side in one run.

Under the emulated ``h100-70b-1b`` profile (every target forward padded to 15 ms, every draft
forward to 2 ms) and on raw CPU, at batch sizes where a pool has something to split. Reports
tokens/s, cache hit rate and tokens per round, with AR as the reference; every mode's outputs
are checked to be identical. On this 2-core machine all draft workers share one core (the
target has the other), so a second worker adds no compute: the emulated regime shows what
splitting the batch does to the draft's critical path when each worker has its own device.

    python bench/draft_workers.py
    python bench/draft_workers.py --regimes emulated --batch-sizes 4 --workers 1 2 3
"""

from __future__ import annotations

import argparse
import os
import sys

from common import add_pair_args, add_ssd_args, load_prompts, markdown_table, pin_threads
from saguaro.compare import ModeSetup
from speculative import run_mode, setup_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_args(parser, new_tokens=96, batch_sizes=(2, 4, 8))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    add_ssd_args(parser, regimes=("emulated", "raw"))
    args = parser.parse_args()
    pin_threads(1)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    from saguaro.tokenizer import load_tokenizer

    all_prompts = load_prompts(args.prompts, load_tokenizer(args.target), max(args.batch_sizes))
    rows, mismatched = [], []
    for regime in args.regimes:
        profile = args.profile if regime == "emulated" else None
        for batch in args.batch_sizes:
            prompts = all_prompts[:batch]
            ar = run_mode(args, batch, ModeSetup("ar"), prompts, profile)
            rows.append([regime, batch, "AR", round(ar.tokens_per_s, 1), 1.0, "", ""])
            for workers in args.workers:
                r = run_mode(args, batch, setup_for(args, "ssd", args.ssd_k), prompts, profile, draft_workers=workers)
                if r.outputs != ar.outputs:
                    mismatched.append(f"{regime}/{batch}/{workers} workers")
                rows.append([regime, batch, f"SSD, {workers} draft worker{'s' if workers > 1 else ''}",
                             round(r.tokens_per_s, 1), round(r.tokens_per_s / ar.tokens_per_s, 3),
                             round(r.hit_rate, 3), round(r.tokens_per_round, 2)])
            print(f"done: {regime} batch {batch}", file=sys.stderr, flush=True)
    print(markdown_table(["regime", "batch", "mode", "tok/s", "vs AR", "cache hit rate", "tok/round"], rows))
    print(f"\nidentical outputs across all modes: {'yes' if not mismatched else 'NO: ' + ', '.join(mismatched)}")


if __name__ == "__main__":
    main()
