"""The governor's SD arm against SD itself: the same greedy workload decoded by SD with its draft
in the target's process, and by an SSD engine whose governor may only choose plain or
synchronous SD rounds (the draft service, ``SpeculateRequest.synchronous``), alternating.
Prints each one's tok/s and per-round verify and draft wait, and the SD arm's cost model (its
measured acceptance, times and chosen lookahead).

    python bench/sd_arm.py --batch 4 --sd-k 3
"""

from __future__ import annotations

import argparse
import os

from common import add_pair_args, load_prompts, pin_threads
from speculative import CORES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_args(parser, new_tokens=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sd-k", type=int, default=3, help="SD's K (the in-process baseline)")
    parser.add_argument("--ssd-k", type=int, default=5, help="the SSD deployment's K (the SD arm's largest lookahead)")
    parser.add_argument("--transport", choices=["unix", "grpc"], default="unix")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    pin_threads(1)
    os.sched_setaffinity(0, {CORES[0]})

    from saguaro.compare import ModeEngine, ModeSetup, alternate
    from saguaro.services.target.governor import SpeculationGovernor
    from saguaro.tokenizer import load_tokenizer

    prompts = load_prompts(args.prompts, load_tokenizer(str(args.target)), 2 * args.batch)
    governor = SpeculationGovernor(arms=("ar", "sd"))
    engines = [ModeEngine(args.target, args.draft, ModeSetup("sd", args.sd_k), args.batch, draft_core=CORES[-1]),
               ModeEngine(args.target, args.draft, ModeSetup("ssd", args.ssd_k, 3, "fast"), args.batch,
                          transport=args.transport, governor=governor, draft_core=CORES[-1])]
    try:
        for engine in engines:  # twice untimed: the governor measures its arms, the model its inputs
            engine.timed(prompts, args.new_tokens)
            engine.timed(prompts, args.new_tokens)
        results = alternate(engines, prompts, args.new_tokens, args.repeats)
        model = engines[1].engine.sizing.sd_lookahead
    finally:
        for engine in engines:
            engine.close()
    names = (f"SD K={args.sd_k}, draft in the target's process", f"SD arm of SSD K={args.ssd_k} ({args.transport})")
    for name, r in zip(names, results):
        ar, sd, _ = r.arm_shares()
        print(f"{name}: {r.tokens_per_s:.1f} tok/s, {r.tokens_per_round:.2f} tokens/round, verify "
              f"{r.verify_s * 1e3:.2f} ms, draft wait {r.draft_wait_s * 1e3:.2f} ms a round"
              + (f"; rounds plain {ar:.0%}, SD {sd:.0%}" if r.setup.mode == "ssd" else ""))
    print("identical outputs:", "yes" if results[0].outputs == results[1].outputs else "NO")
    print("measured P(n >= i):", [round(x, 2) if x is not None else None for x in model.reach])
    for bucket, times in sorted(model.times.items()):
        rates = [model.rate(bucket, k) for k in range(1, args.ssd_k + 1)]
        verify = {k: round(t * 1e3, 2) for k, t in sorted(times.verify.by_x.items())}
        print(f"bucket {bucket}: verify ms by lookahead {verify}, draft step {times.step_s * 1e3:.2f} ms, transport "
              f"{times.transport_s * 1e3:.2f} ms; modelled tok/s per row for k = 1..{args.ssd_k}: "
              f"{[round(r, 1) for r in rates]} -> lookahead {model.best(bucket)}")


if __name__ == "__main__":
    main()
