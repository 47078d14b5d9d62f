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
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import add_pair_args, add_ssd_args, load_prompts, markdown_table, pin_threads
from saguaro.net import free_port

REPO = Path(__file__).resolve().parents[1]
# The machine's cores, read before main() pins this process to the first one: the target runs
# here on the first core, every draft process on the last.
CORES = sorted(os.sched_getaffinity(0))


@dataclass
class Result:
    regime: str
    batch: int
    mode: str
    k: int
    tokens_per_s: float
    tokens_per_round: float = 0.0
    acceptance: list[float] = field(default_factory=list)
    hit_rate: float = 0.0
    jit: int = 0
    fast: int = 0
    transport: str = "none"
    backup: str = ""
    fan_out: int = 0
    rounds: int = 0  # decode rounds of the batch (each advances every running row)
    seconds: float = 0.0
    verify_s: float = 0.0  # per round: the target's verify step and its bookkeeping
    draft_wait_s: float = 0.0  # per round: the target waiting for the draft's reply
    build_s: float = 0.0  # per round: the draft's cache build (SSD)
    outputs: list[list[int]] = field(default_factory=list, repr=False)


def summarise(regime: str, batch: int, mode: str, k: int, outputs, seconds: float, decode_rounds: int = 0) -> Result:
    """``decode_rounds``: the engine's decode steps in the run (``ModeRunner.last_rounds``)."""
    stats = [o.stats for o in outputs]
    tokens = sum(len(o.token_ids) for o in outputs)
    rounds = sum(s.get("rounds", 0) for s in stats)
    spec_rounds = sum(s.get("spec_rounds", 0) for s in stats)
    accepted = [sum(s["accepted_per_position"][i] for s in stats if s.get("accepted_per_position")) for i in range(k)]
    hits = sum(s.get("cache_hits", 0) for s in stats)
    lookups = hits + sum(s.get("cache_misses", 0) for s in stats)
    return Result(
        regime, batch, mode, k, tokens / seconds,
        tokens_per_round=sum(s.get("tokens_from_rounds", 0) for s in stats) / rounds if rounds else 0.0,
        acceptance=[round(a / spec_rounds, 3) for a in accepted] if spec_rounds else [],
        hit_rate=hits / lookups if lookups else 0.0,
        jit=sum(s.get("backups_jit", 0) for s in stats),
        fast=sum(s.get("backups_fast", 0) for s in stats),
        transport=stats[0].get("transport", "none") if stats else "none",
        rounds=decode_rounds,
        seconds=seconds,
        verify_s=sum(s.get("verify_time_s", 0.0) for s in stats) / rounds if rounds else 0.0,
        draft_wait_s=sum(s.get("draft_time_s", 0.0) for s in stats) / rounds if rounds else 0.0,
        build_s=sum(s.get("draft_build_time_s", 0.0) for s in stats) / rounds if rounds else 0.0,
        outputs=[o.token_ids for o in outputs],
    )


def start_draft(args, port: int, emulate: str | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "saguaro.cli", "draft", "--model", str(args.draft), "--port", str(port),
           "--k", str(args.ssd_k), "--fan-out", str(args.ssd_fan_out), "--kv-cache-bytes", str(1 << 28)]
    if emulate:
        cmd += ["--emulate", emulate]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    draft_core = {CORES[-1]}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, draft_core))
    line = proc.stdout.readline()
    if "listening" not in line:
        proc.kill()
        raise SystemExit(f"draft service failed to start: {line!r}")
    return proc


class ModeRunner:
    """One mode's engine (and its draft services), kept up between timed runs so that runs of
    several modes can alternate: on a shared VM the machine's speed drifts over minutes, and
    alternating puts that drift on every mode alike.

    ``governor``: the target's speculation governor (None: always speculate);
    ``draft_workers``: draft services sharing the batch (ssd)."""

    def __init__(self, args, regime: str, batch: int, mode: str, k: int, profile, governor=None,
                 draft_workers: int = 1):
        from saguaro.config import EngineConfig
        from saguaro.emulation import engine_fields
        from saguaro.llm import LLM
        from saguaro.services.draft.settings import DraftSettings
        from saguaro.services.target.local import speculative_engine
        from saguaro.v1 import speculation_pb2 as pb

        self.regime, self.batch, self.mode, self.k = regime, batch, mode, k
        common = dict(max_num_seqs=batch, kv_cache_bytes=1 << 28, show_progress=False)
        target = EngineConfig(model=str(args.target), **engine_fields(profile, "target"), **common)
        draft = EngineConfig(model=str(args.draft), **engine_fields(profile, "draft"), **common)
        policy = {"jit": pb.BACKUP_POLICY_JIT, "fast": pb.BACKUP_POLICY_FAST, "adaptive": pb.BACKUP_POLICY_ADAPTIVE}
        fan_out = args.ssd_fan_out if mode == "ssd" else 1
        settings = DraftSettings(k=max(k, 1), fan_out=fan_out, backup_policy=policy[args.backup])
        self.draft_procs = []
        addresses = None
        if mode == "ssd":
            ports = [free_port() for _ in range(draft_workers)]
            self.draft_procs = [start_draft(args, port, profile) for port in ports]
            addresses = [f"127.0.0.1:{port}" for port in ports]
        self.engine = speculative_engine(target, mode, draft if mode == "sd" else None, settings,
                                         draft_address=addresses, fast_path=None if args.transport == "grpc" else args.transport,
                                         governor=governor)
        self.llm = LLM.from_engine(self.engine, None)
        self.new_tokens = args.new_tokens
        self.last_rounds = 0  # decode steps of the last run: a round advances every running row
        decode = self.engine._decode

        def counted(seqs) -> None:
            self.last_rounds += 1
            decode(seqs)

        self.engine._decode = counted

    def warm_up(self, prompts, rehearse: bool = False) -> None:
        """A short request; or (``rehearse``) the whole workload once untimed: a server in steady
        state (warm caches, a governor that has measured these batch sizes)."""
        from saguaro import SamplingParams

        if rehearse:
            self.run(prompts)
        else:
            self.llm.generate(prompts[:1], SamplingParams(max_tokens=8, ignore_eos=True))

    def run(self, prompts) -> tuple[list, float]:
        """The outputs of one timed run of ``prompts`` and its seconds."""
        from saguaro import SamplingParams

        self.last_rounds = 0
        start = time.perf_counter()
        outputs = self.llm.generate(prompts, SamplingParams(max_tokens=self.new_tokens, ignore_eos=True))
        return outputs, time.perf_counter() - start

    def close(self) -> None:
        if self.engine.proposer is not None:
            self.engine.proposer.close()
        for draft_proc in self.draft_procs:
            draft_proc.kill()
            draft_proc.wait()

    def __enter__(self) -> ModeRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_mode(args, regime: str, batch: int, mode: str, k: int, prompts, profile, governor=None,
             draft_workers: int = 1, rehearse: bool = False) -> Result:
    """One mode on all prompts, timed once (see ``ModeRunner``)."""
    with ModeRunner(args, regime, batch, mode, k, profile, governor, draft_workers) as runner:
        runner.warm_up(prompts, rehearse)
        outputs, seconds = runner.run(prompts)
    return summarise(regime, batch, mode, k, outputs, seconds, runner.last_rounds)


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
    """The dilation S that keeps every device step's real CPU work under half of its pad.

    One raw SSD run at this batch size, with the largest fan-out benchmarked, measures the real
    work per round: the target's verify step, and the draft's build (glue and fork, then K tree
    steps: K + 1 device steps). S is the
    smallest multiple of 0.5 at which each is at most half of its profile cost, and at least 1.
    """
    from saguaro.emulation import PROFILES

    args = argparse.Namespace(**{**vars(args), "ssd_fan_out": max(getattr(args, "ssd_fan_outs", [args.ssd_fan_out]))})
    with ModeRunner(args, "raw", batch, "ssd", args.ssd_k, None) as runner:
        runner.warm_up(prompts)
        outputs, seconds = runner.run(prompts[: max(batch, 2)])
    raw = summarise("raw", batch, "ssd", args.ssd_k, outputs, seconds, runner.last_rounds)
    profile = PROFILES[args.profile]
    step_s = raw.build_s / (args.ssd_k + 1)
    tree_tokens = batch * args.ssd_fan_out * (args.ssd_k + 1)
    need = max(2 * step_s / profile.draft.seconds(tree_tokens),
               2 * raw.verify_s / profile.target.seconds(batch * (args.ssd_k + 1)), 1.0)
    dilation = math.ceil(need * 2) / 2
    print(f"batch {batch}: real verify {raw.verify_s * 1e3:.2f} ms, real draft step {step_s * 1e3:.2f} ms "
          f"-> dilation x{dilation:g}", file=sys.stderr, flush=True)
    return dilation


def timeline_ceiling(ssd: Result, batch: int, k: int, cost) -> tuple[float, float]:
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
    if ssd.backup == "jit":
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
    results: list[Result] = []
    dilations: dict[int, float] = {}
    for regime in args.regimes:
        for batch in args.batch_sizes:
            profile = None
            if regime == "emulated":
                dilations[batch] = calibrate_dilation(args, batch, prompts) if args.dilation == "auto" else float(args.dilation)
                profile = f"{args.profile}:x{dilations[batch]:g}"
            results.append(run_mode(args, regime, batch, "ar", 0, prompts, profile))
            results += [run_mode(args, regime, batch, "sd", k, prompts, profile) for k in args.sd_ks]
            for backup in args.ssd_backups:
                for fan_out in args.ssd_fan_outs:
                    ssd_args = argparse.Namespace(**{**vars(args), "backup": backup, "ssd_fan_out": fan_out})
                    ssd = run_mode(ssd_args, regime, batch, "ssd", args.ssd_k, prompts, profile)
                    ssd.backup, ssd.fan_out = backup, fan_out
                    results.append(ssd)
            print(f"done: {regime} batch {batch}", file=sys.stderr, flush=True)
    reference = results[0].outputs
    mismatched = [f"{r.regime}/{r.batch}/{r.mode}{r.k}" for r in results if r.outputs != reference]

    rows, bars = [], []
    for regime in args.regimes:
        for batch in args.batch_sizes:
            group = [r for r in results if r.regime == regime and r.batch == batch]
            ar = next(r for r in group if r.mode == "ar")
            best_sd = max((r for r in group if r.mode == "sd"), key=lambda r: r.tokens_per_s)
            ssds = [r for r in group if r.mode == "ssd"]
            best_ssd = max(ssds, key=lambda r: r.tokens_per_s)
            for r in group:
                label = (f"{r.mode.upper()}" + (f" K={r.k}" if r.k else "") + (f" F={r.fan_out}" if r.fan_out else "")
                         + (f" {r.backup}" if r.backup else "")
                         + (" (best SD)" if r is best_sd else ""))
                ms_round = r.seconds / r.rounds * 1e3 if r.rounds else 0.0
                rows.append([regime, batch, label, round(r.tokens_per_s, 1), round(r.tokens_per_s / ar.tokens_per_s, 2),
                             round(r.tokens_per_round, 2), round(r.hit_rate, 2), f"{r.jit}/{r.fast}",
                             round(ms_round, 1), round(r.verify_s * 1e3, 1), round(r.draft_wait_s * 1e3, 1),
                             round(r.build_s * 1e3, 1), r.transport])
            if regime == "emulated":
                profile, dilation = parse_emulate(f"{args.profile}:x{dilations[batch]:g}")
                t_round, ceiling = timeline_ceiling(best_ssd, batch, args.ssd_k, profile.dilated(dilation))
                gap_us = (best_ssd.seconds / best_ssd.rounds - t_round) * 1e6
                bars.append([batch, f"x{dilation:g}", f"F={best_ssd.fan_out} {best_ssd.backup}",
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
        args.json.write_text(json.dumps({"results": [{k: v for k, v in vars(r).items() if k != "outputs"} for r in results],
                                         "dilations": dilations, "peers": peers}, indent=2))


if __name__ == "__main__":
    main()
