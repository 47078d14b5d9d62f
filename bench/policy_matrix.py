"""Never slower than AR or SD: AR vs synchronous SD (each K of ``--sd-ks``) vs SSD always
speculating vs SSD under the speculation governor (``--speculation-policy adaptive``, the
default: it runs the fastest of AR, SD on the draft service and SSD per batch size), batch
1…16, emulated H100 timings and raw CPU.

The bars (issue 13): adaptive ≥ 0.97 × max(AR, best SD) in every cell, and adaptive ≥ 1.0 × best
SD at batch 8 and 16 (emulated). Each cell decodes ``2 × batch`` prompts (two waves; all of
them when the prompt file holds fewer) of ``--new-tokens`` greedy tokens (EOS ignored); every
mode's outputs are checked to be identical. Every mode first runs the same workload once
untimed (a server in steady state: warm prefix caches, a governor that has measured these batch
sizes); then the modes' timed runs alternate ``--repeats`` times (AR, SD K=2, ..., always,
adaptive, AR, ...), so the VM's drifting speed weighs on each alike, and a mode's tokens/s is
over all its runs. The emulated regime calibrates its dilation per batch size
(``speculative.calibrate_dilation``). The column "adaptive, cold" is one run of a fresh
governor, its first encounter with the workload, measuring rounds included.

    python bench/policy_matrix.py --regimes emulated --batch-sizes 1 2 4 8 16 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys

from common import add_pair_args, add_ssd_args, load_prompts, markdown_table, pin_threads
from saguaro.compare import ModeSetup, alternate
from speculative import calibrate_dilation, open_engine, run_mode, setup_for

BAR = 0.97  # adaptive / max(AR, best SD) must stay at or above this everywhere
LARGE_BATCH_BAR = 1.0  # adaptive / best SD at batch 8 and 16, emulated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_args(parser, batch_sizes=(1, 2, 4, 8, 16))
    add_ssd_args(parser, regimes=("emulated", "raw"), backup="fast")
    parser.add_argument("--sd-ks", type=int, nargs="+", default=[2, 3, 4], help="SD lookaheads; the best is the bar")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed runs per mode (default: 3)")
    parser.add_argument("--dilation", default="auto", help="emulated regime: the dilation S (auto: calibrated)")
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
        for batch in args.batch_sizes:
            prompts = all_prompts[: 2 * batch]
            profile = None
            if regime == "emulated":
                dilation = calibrate_dilation(args, batch, prompts) if args.dilation == "auto" else float(args.dilation)
                profile = f"{args.profile}:x{dilation:g}"
            (ar, *sds, always, adaptive), depths = rehearsed_alternation(args, batch, prompts, profile,
                                                                         SpeculationGovernor)
            cold = run_mode(args, batch, setup_for(args, "ssd", args.ssd_k), prompts, profile, SpeculationGovernor())
            for r in (*sds, always, adaptive, cold):
                if r.outputs != ar.outputs[: len(r.outputs)]:  # the cold run is one run of the prompts
                    mismatched.append(f"{regime}/{batch}/{r.setup.label}")
            best_sd = max(sds, key=lambda r: r.tokens_per_s)
            peer = max(ar.tokens_per_s, best_sd.tokens_per_s)
            ratio = adaptive.tokens_per_s / peer
            if ratio < BAR:
                missed.append(f"{regime}/batch {batch}: adaptive / max(AR, best SD) {ratio:.3f}")
            if regime == "emulated" and batch >= 8 and adaptive.tokens_per_s < LARGE_BATCH_BAR * best_sd.tokens_per_s:
                missed.append(f"{regime}/batch {batch}: adaptive / best SD {adaptive.tokens_per_s / best_sd.tokens_per_s:.3f}")
            rows.append([regime, batch, profile or "", round(ar.tokens_per_s, 1),
                         f"K={best_sd.setup.k}: {best_sd.tokens_per_s:.1f}", round(always.tokens_per_s, 1),
                         round(adaptive.tokens_per_s, 1), round(ratio, 3),
                         round(adaptive.tokens_per_s / best_sd.tokens_per_s, 3),
                         round(always.tokens_per_s / best_sd.tokens_per_s, 3), round(cold.tokens_per_s / peer, 3),
                         "/".join(f"{share:.0%}" for share in adaptive.arm_shares()), depths])
            print(f"done: {regime} batch {batch}: adaptive / max(AR, best SD) {ratio:.3f}", file=sys.stderr, flush=True)
    print(markdown_table(["regime", "batch", "emulation", "AR tok/s", "best SD tok/s", "SSD always tok/s",
                          "SSD adaptive tok/s", "adaptive / max(AR, SD)", "adaptive / best SD", "always / best SD",
                          "adaptive cold / max(AR, SD)", "adaptive rounds ar/sd/ssd", "adaptive SSD depth/branches"], rows))
    print(f"\nidentical outputs across all modes: {'yes' if not mismatched else 'NO: ' + ', '.join(mismatched)}")
    print(f"bars (adaptive >= {BAR:.2f} x max(AR, best SD) everywhere; >= {LARGE_BATCH_BAR:.1f} x best SD at batch 8, 16 "
          f"emulated): {'met' if not missed else 'MISSED at ' + '; '.join(missed)}")


def rehearsed_alternation(args, batch: int, prompts, profile, governor):
    """AR, SD at each K of ``--sd-ks``, always-SSD and adaptive SSD (under ``governor()``),
    rehearsed, then timed in turn ``args.repeats`` times; each result sums its mode's runs.
    Also returns the depths the adaptive engine's SSD rounds chose and the branches per row of
    its draft's last build, per batch-size bucket."""
    ssd = setup_for(args, "ssd", args.ssd_k)
    modes = [(ModeSetup("ar"), None), *((ModeSetup("sd", k), None) for k in args.sd_ks), (ssd, None), (ssd, governor())]
    engines = []
    try:
        for setup, g in modes:
            engines.append(open_engine(args, batch, setup, profile, g))
            engines[-1].timed(prompts, args.new_tokens)
        results = alternate(engines, prompts, args.new_tokens, args.repeats)
        adaptive = engines[-1]
        depth_model = adaptive.engine.sizing.ssd_depth
        chosen = {b: depth_model.depths.get(b, depth_model.k_max) for b in sorted(depth_model.times)}
        return results, " ".join(f"b{b}: {k}/{adaptive.branches.get(b, '-')}" for b, k in chosen.items())
    finally:
        for engine in engines:
            engine.close()


if __name__ == "__main__":
    main()
