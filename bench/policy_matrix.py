"""Never slower than AR: AR vs SSD (always speculating) vs SSD under the speculation governor
(``--speculation-policy adaptive``, the default), batch 1…16, raw CPU and emulated H100 timings.

The bar (issue 9): adaptive SSD is never more than 3 % slower than AR at any batch size. Each
cell decodes ``2 × batch`` prompts (two waves; all of them when the prompt file holds fewer) of
``--new-tokens`` greedy tokens (EOS ignored); every mode's outputs are checked to be identical.
Every mode first runs the same workload once untimed (a server in steady state: warm prefix
caches, a governor that has measured these batch sizes); then the modes' timed runs alternate
``--repeats`` times (AR, always, adaptive, AR, ...), so the VM's drifting speed weighs on each
alike, and a mode's tokens/s is over all its runs. The column "adaptive, cold" is one run of a
fresh governor, its first encounter with the workload, measuring rounds included.
"""

from __future__ import annotations

import argparse
import os
import sys

from common import add_pair_args, add_ssd_args, load_prompts, markdown_table, pin_threads
from speculative import ModeRunner, run_mode, summarise

BAR = 0.97  # adaptive SSD / AR must stay at or above this


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_args(parser, batch_sizes=(1, 2, 4, 8, 16))
    add_ssd_args(parser, regimes=("emulated", "raw"), backup="adaptive")
    parser.add_argument("--repeats", type=int, default=2, help="alternating timed runs per mode (default: 2)")
    args = parser.parse_args()
    pin_threads(1)
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    from saguaro.services.target.governor import SpeculationGovernor
    from saguaro.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.target)
    available = sum(1 for line in args.prompts.read_text().splitlines() if line.strip())
    all_prompts = load_prompts(args.prompts, tokenizer, min(2 * max(args.batch_sizes), available))
    rows, mismatched, missed = [], [], []
    for regime in args.regimes:
        profile = args.profile if regime == "emulated" else None
        for batch in args.batch_sizes:
            prompts = all_prompts[: 2 * batch]
            ar, always, adaptive = alternate(args, regime, batch, prompts, profile, SpeculationGovernor)
            cold = run_mode(args, regime, batch, "ssd", args.ssd_k, prompts, profile, SpeculationGovernor())
            for name, r in (("always", always), ("adaptive", adaptive), ("adaptive cold", cold)):
                if r.outputs != ar.outputs[: len(r.outputs)]:  # the cold run is one run of the prompts
                    mismatched.append(f"{regime}/{batch}/{name}")
            ratio = adaptive.tokens_per_s / ar.tokens_per_s
            if ratio < BAR:
                missed.append(f"{regime}/batch {batch}: {ratio:.3f}")
            rows.append([regime, batch, round(ar.tokens_per_s, 1), round(always.tokens_per_s, 1),
                         round(always.tokens_per_s / ar.tokens_per_s, 3), round(adaptive.tokens_per_s, 1),
                         round(ratio, 3), round(adaptive.tokens_per_round, 2), round(cold.tokens_per_s / ar.tokens_per_s, 3)])
            print(f"done: {regime} batch {batch}: adaptive / AR {ratio:.3f}, always / AR "
                  f"{always.tokens_per_s / ar.tokens_per_s:.3f}", file=sys.stderr, flush=True)  # kept if a later cell fails
    print(markdown_table(["regime", "batch", "AR tok/s", "SSD always tok/s", "always / AR", "SSD adaptive tok/s",
                          "adaptive / AR", "adaptive tok/round", "adaptive, cold / AR"], rows))
    print(f"\nidentical outputs across all modes: {'yes' if not mismatched else 'NO: ' + ', '.join(mismatched)}")
    print(f"bar (adaptive >= {BAR:.2f} x AR everywhere): {'met' if not missed else 'MISSED at ' + ', '.join(missed)}")


def alternate(args, regime: str, batch: int, prompts, profile, governor):
    """AR, always-SSD and adaptive SSD (under ``governor()``), rehearsed, then timed in turn
    ``args.repeats`` times; each result sums its mode's runs."""
    modes = (("ar", 0, None), ("ssd", args.ssd_k, None), ("ssd", args.ssd_k, governor()))
    runners = [ModeRunner(args, regime, batch, mode, k, profile, g) for mode, k, g in modes]
    try:
        for runner in runners:
            runner.warm_up(prompts, rehearse=True)
        runs: list[tuple[list, float]] = [([], 0.0) for _ in runners]
        for _ in range(args.repeats):
            for i, runner in enumerate(runners):
                outputs, seconds = runner.run(prompts)
                runs[i] = (runs[i][0] + outputs, runs[i][1] + seconds)
    finally:
        for runner in runners:
            runner.close()
    return [summarise(regime, batch, r.mode, r.k, outputs, seconds) for r, (outputs, seconds) in zip(runners, runs)]


if __name__ == "__main__":
    main()
