"""AR vs synchronous SD vs SSD on a real draft/target pair, side by side in one run.

Target and draft run in separate processes on separate cores for SSD (the draft is a
``saguaro draft`` service pinned to core 1, the target runs here on core 0, one thread each);
SD keeps its draft in the target's process, as the synchronous baseline does. Two regimes:

* ``raw``: plain CPU timings of these small models;
* ``emulated``: every device step (metadata, forward, sampling) padded to the profile's cost
  (``--profile h100-70b-1b[:xS]``: target 15 ms up to 300 tokens a step, draft 2 ms up to 256,
  linear beyond, every pad times S), so the overlap SSD exploits is measured at accelerator-like
  cost ratios (saguaro/emulation.py says what this models and what it does not).

Every request decodes exactly ``--new-tokens`` tokens greedily (EOS ignored); the outputs of
every mode are checked to be identical. transformers ``generate`` and assisted generation
(``assistant_model=``) run on the same pair and prompts as the peer (raw CPU, batch 1).

    python bench/speculative.py                       # both regimes, batch 1 and 4
    python bench/speculative.py --regimes emulated --batch-sizes 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import add_pair_args, add_ssd_args, load_prompts, markdown_table, pin_threads
from saguaro.compare import ModeEngine, ModeResult, ModeSetup, dilation_for, machine_cores

REPO = Path(__file__).resolve().parents[1]
# The machine's cores, read before main() pins this process to the first one: the target runs
# here on the first core, every draft process on the last (saguaro.compare).
CORES = machine_cores()


def setup_for(args, mode: str, k: int = 0) -> ModeSetup:
    """A mode as the command line configures it: SSD with ``--ssd-fan-out`` and ``--backup``."""
    return ModeSetup(mode, k, args.ssd_fan_out if mode == "ssd" else 1, args.backup)


def regime_of(result: ModeResult) -> str:
    return "emulated" if result.profile else "raw"


def open_engine(args, batch: int, setup: ModeSetup, profile, governor=None, draft_workers: int = 1) -> ModeEngine:
    return ModeEngine(args.target, args.draft, setup, batch, profile, args.transport, governor, draft_workers,
                      draft_core=CORES[-1])


def run_mode(args, batch: int, setup: ModeSetup, prompts, profile, governor=None, draft_workers: int = 1,
             rehearse: bool = False) -> ModeResult:
    """One mode on all prompts, timed once after a warm-up; or (``rehearse``) after the whole
    workload once untimed: a server in steady state (warm caches, a governor that has measured
    these batch sizes)."""
    with open_engine(args, batch, setup, profile, governor, draft_workers) as engine:
        if rehearse:
            engine.timed(prompts, args.new_tokens)
        else:
            engine.warm_up(prompts)
        return engine.run(prompts, args.new_tokens)


def run_peers(args, prompts) -> dict[str, float]:
    """transformers generate and assisted generation, batch 1, raw CPU (the peer)."""
    import torch
    from transformers import AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    draft = AutoModelForCausalLM.from_pretrained(args.draft, dtype=torch.float32).eval()
    out = {}
    for name, extra in (("transformers generate", {}), ("transformers assisted", {"assistant_model": draft})):
        tokens, start = 0, time.perf_counter()
        for p in prompts:
            ids = torch.tensor([p])
            with torch.inference_mode():
                gen = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                                      min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=2, **extra)
            tokens += gen.shape[1] - ids.shape[1]
        out[name] = tokens / (time.perf_counter() - start)
    return out


def calibrate_dilation(args, batch: int, prompts) -> float:
    """``saguaro.compare.dilation_for`` from one raw SSD run at this batch size, with the
    largest fan-out benchmarked."""
    setup = ModeSetup("ssd", args.ssd_k, max(getattr(args, "ssd_fan_outs", [args.ssd_fan_out])), args.backup)
    raw = run_mode(args, batch, setup, prompts[: max(batch, 2)], None)
    dilation = dilation_for(raw, args.profile)
    print(f"batch {batch}: real verify {raw.verify_s * 1e3:.2f} ms, real draft step "
          f"{raw.build_s / (args.ssd_k + 1) * 1e3:.2f} ms -> dilation x{dilation:g}", file=sys.stderr, flush=True)
    return dilation


def timeline_ceiling(ssd: ModeResult, batch: int, k: int, cost) -> tuple[float, float]:
    """Tokens/s of the paper's timeline at the run's measured tokens per round and hit rate.

    A round costs the target's verify step, plus, when some row of the batch missed the cache
    and the backup is JIT, K draft steps before the reply: with hit rate h per row, a fraction
    1 - h^B of the rounds. Fast backups answer at once. Transport, scheduling and Python cost
    nothing on this timeline:

        T_round = T_target(B (K+1)) + [JIT] (1 - h^B) K T_draft(B)
        ceiling = B * tokens_per_round / T_round

    Returns ``(T_round seconds, ceiling tokens/s)``.
    """
    t_round = cost.target.seconds(batch * (k + 1))
    if ssd.setup.backup == "jit":
        t_round += (1 - ssd.hit_rate ** batch) * k * cost.draft.seconds(batch)
    return t_round, batch * ssd.tokens_per_round / t_round


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_args(parser)
    parser.add_argument("--num-prompts", type=int, default=8)
    parser.add_argument("--sd-ks", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6, 7], help="SD lookaheads swept; the best is reported")
    add_ssd_args(parser)
    parser.add_argument("--dilation", default="auto",
                        help="emulated regime: multiply every pad by this (auto: measured per batch size so that real "
                             "CPU work stays under half of each pad)")
    parser.add_argument("--ssd-backups", nargs="+", choices=["jit", "fast"], default=["jit", "fast"],
                        help="SSD is run with each backup policy ...")
    parser.add_argument("--ssd-fan-outs", type=int, nargs="+", default=[3, 10],
                        help="... and each fan-out F; the best SSD is reported, as SD's best K is")
    parser.add_argument("--json", type=Path, default=None, help="also write all results here")
    args = parser.parse_args()
    pin_threads(1)
    os.sched_setaffinity(0, {CORES[0]})

    from saguaro.emulation import parse_emulate
    from saguaro.tokenizer import load_tokenizer

    prompts = load_prompts(args.prompts, load_tokenizer(args.target), args.num_prompts)
    results: list[ModeResult] = []
    dilations: dict[int, float] = {}
    for regime in args.regimes:
        for batch in args.batch_sizes:
            profile = None
            if regime == "emulated":
                dilations[batch] = calibrate_dilation(args, batch, prompts) if args.dilation == "auto" else float(args.dilation)
                profile = f"{args.profile}:x{dilations[batch]:g}"
            results.append(run_mode(args, batch, ModeSetup("ar"), prompts, profile))
            results += [run_mode(args, batch, ModeSetup("sd", k), prompts, profile) for k in args.sd_ks]
            for backup in args.ssd_backups:
                for fan_out in args.ssd_fan_outs:
                    results.append(run_mode(args, batch, ModeSetup("ssd", args.ssd_k, fan_out, backup), prompts, profile))
            print(f"done: {regime} batch {batch}", file=sys.stderr, flush=True)
    reference = results[0].outputs
    mismatched = [f"{regime_of(r)}/{r.batch}/{r.setup.label}" for r in results if r.outputs != reference]

    rows, bars = [], []
    for regime in args.regimes:
        for batch in args.batch_sizes:
            group = [r for r in results if regime_of(r) == regime and r.batch == batch]
            ar = next(r for r in group if r.setup.mode == "ar")
            best_sd = max((r for r in group if r.setup.mode == "sd"), key=lambda r: r.tokens_per_s)
            ssds = [r for r in group if r.setup.mode == "ssd"]
            best_ssd = max(ssds, key=lambda r: r.tokens_per_s)
            for r in group:
                label = r.setup.label + (" (best SD)" if r is best_sd else "")
                ms_round = r.seconds / r.rounds * 1e3 if r.rounds else 0.0
                rows.append([regime, batch, label, round(r.tokens_per_s, 1), round(r.tokens_per_s / ar.tokens_per_s, 2),
                             round(r.tokens_per_round, 2), round(r.hit_rate, 2), f"{r.jit}/{r.fast}",
                             round(ms_round, 1), round(r.verify_s * 1e3, 1), round(r.draft_wait_s * 1e3, 1),
                             round(r.build_s * 1e3, 1), r.transport])
            if regime == "emulated":
                profile, dilation = parse_emulate(f"{args.profile}:x{dilations[batch]:g}")
                t_round, ceiling = timeline_ceiling(best_ssd, batch, args.ssd_k, profile.dilated(dilation))
                gap_us = (best_ssd.seconds / best_ssd.rounds - t_round) * 1e6
                bars.append([batch, f"x{dilation:g}", f"F={best_ssd.setup.fan_out} {best_ssd.setup.backup}",
                             round(best_ssd.tokens_per_s / best_sd.tokens_per_s, 2),
                             round(best_ssd.tokens_per_s / ar.tokens_per_s, 2), round(best_ssd.tokens_per_s / ceiling, 2),
                             round(gap_us)])
    print(markdown_table(["regime", "batch", "mode", "tok/s", "vs AR", "tok/round", "hit rate", "jit/fast backups",
                          "ms/round", "verify ms", "draft wait ms", "build ms", "transport"], rows))
    if bars:
        print()
        print(markdown_table(["batch", "dilation", "best SSD", "SSD / best SD", "SSD / AR", "SSD / ceiling",
                              "gap to ceiling per round (us)"], bars))
    peers = run_peers(args, prompts)
    print()
    print(markdown_table(["peer (raw CPU, batch 1)", "tok/s"], [[k, round(v, 1)] for k, v in peers.items()]))
    print(f"\nidentical outputs across all modes: {'yes' if not mismatched else 'NO: ' + ', '.join(mismatched)}")
    if args.json:
        args.json.write_text(json.dumps({"results": [{**{k: v for k, v in vars(r).items() if k not in ("outputs", "setup")},
                                                      **vars(r.setup), "regime": regime_of(r)} for r in results],
                                         "dilations": dilations, "peers": peers}, indent=2))


if __name__ == "__main__":
    main()
