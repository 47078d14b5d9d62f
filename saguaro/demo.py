"""The embedded demo: what ``bash scripts/demo`` shows a newcomer in one screen.

1. ``saguaro up`` in SSD mode on the bundled pair (a draft/target pair trained on the Python
   standard library, saguaro/assets/pystdlib-mini), streaming one completion's text through
   the gateway as it is generated.
2. A table of AR, synchronous SD at its best K, and SSD on the same prompts, side by side in one
   run (``saguaro.compare``), with tokens per round, acceptance and cache hit rate, and a check
   that every mode produced the same tokens.

By default the table is emulated (``h100-70b-1b``, saguaro/emulation.py): on a CPU these small
models have the wrong cost ratio for SSD, whose gain comes from hiding a cheap draft's work
behind an expensive target's verify. ``--raw`` shows the plain CPU timings instead.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from saguaro.compare import ModeEngine, ModeResult, ModeSetup, alternate, dilation_for
from saguaro.errors import ModelLoadError

DEMO_PAIR = Path(__file__).resolve().parent / "assets" / "pystdlib-mini"
PROFILE = "h100-70b-1b"
RAW_NOTE = ("On this CPU a draft step costs a large share of a target step (the paper's premise is about 1 : 7.5 "
            "on GPUs), so SSD's hidden draft work saves little and its extra tree work can cost more than it "
            "saves. See docs/benchmarks.md §2c.")


def demo_pair() -> tuple[Path, Path]:
    """(target, draft) folders of the bundled pair."""
    target, draft = DEMO_PAIR / "target", DEMO_PAIR / "draft"
    for folder in (target, draft):
        if not (folder / "model.safetensors").is_file():
            raise ModelLoadError(f"the demo pair is missing from {folder}; reinstall Saguaro, or retrain it with "
                                 "`python scripts/train_demo_pair.py` from a clone of the repository")
    return target, draft


def demo_prompts(count: int) -> list[str]:
    """The first ``count`` held-out prompts of the bundled pair (code the models never saw)."""
    rows = [json.loads(line)["prompt"] for line in (DEMO_PAIR / "prompts.jsonl").read_text().splitlines() if line]
    return rows[:count]


@dataclass(frozen=True)
class DemoPlan:
    """How much the demo decodes and which modes it compares."""

    prompts: int = 2
    new_tokens: int = 48
    stream_tokens: int = 80
    sd_ks: tuple[int, ...] = (2, 3, 4)
    ssd: ModeSetup = ModeSetup("ssd", k=5, fan_out=3, backup="fast")
    repeats: int = 2
    emulate: bool = True
    dilation: float | None = None  # None: calibrated on this machine (saguaro.compare.dilation_for)


@dataclass
class SpeedTable:
    """AR, every SD K tried, and SSD, measured alternately in one run."""

    ar: ModeResult
    sds: list[ModeResult]
    ssd: ModeResult
    profile: str | None
    tokens_per_mode: int  # greedy tokens each mode decoded, over all its runs

    @property
    def best_sd(self) -> ModeResult:
        return max(self.sds, key=lambda r: r.tokens_per_s)

    @property
    def identical(self) -> bool:
        return all(r.outputs == self.ar.outputs for r in (*self.sds, self.ssd))

    def rows(self) -> list[list[str]]:
        """mode, tok/s, vs AR, tokens per round, acceptance of the first draft token, cache hit rate.

        The first position's acceptance compares across K (later positions are accepted only
        after every earlier one, so a mean over K positions falls as K grows)."""
        out = []
        for r, label in ((self.ar, "AR (plain decoding)"),
                         (self.best_sd, f"SD, best K={self.best_sd.setup.k} of {','.join(str(s.setup.k) for s in self.sds)}"),
                         (self.ssd, f"SSD K={self.ssd.setup.k} F={self.ssd.setup.fan_out}")):
            acceptance = r.acceptance[0] if r.acceptance else None
            out.append([label, f"{r.tokens_per_s:.1f}", f"{r.tokens_per_s / self.ar.tokens_per_s:.2f}x",
                        f"{r.tokens_per_round:.2f}", "-" if acceptance is None else f"{acceptance:.2f}",
                        f"{r.hit_rate:.2f}" if r.setup.mode == "ssd" else "-"])
        return out

    def render(self) -> str:
        header = ["mode", "tok/s", "vs AR", "tokens/round", "1st-token acceptance", "cache hit rate"]
        rows = [header] + self.rows()
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        line = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
        lines = [line(header), "  ".join("-" * w for w in widths), *map(line, rows[1:])]
        ssd_vs_sd = self.ssd.tokens_per_s / self.best_sd.tokens_per_s
        lines.append("")
        lines.append(f"SSD / best SD: {ssd_vs_sd:.2f}x    SSD / AR: {self.ssd.tokens_per_s / self.ar.tokens_per_s:.2f}x")
        lines.append(f"outputs identical across AR, SD and SSD: {'yes' if self.identical else 'NO'} "
                     f"({self.tokens_per_mode} greedy tokens per mode, over its runs)")
        return "\n".join(lines)


def encoded_prompts(target: Path, count: int) -> list[list[int]]:
    from saguaro.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(target))
    return [tokenizer.encode(p, add_special_tokens=False) for p in demo_prompts(count)]


def emulation_profile(target: Path, draft: Path, plan: DemoPlan) -> str | None:
    """``PROFILE:xS`` for the plan (None: raw), with S calibrated here unless the plan sets it:
    one short raw SSD run measures this CPU's real work per step."""
    if not plan.emulate:
        return None
    dilation = plan.dilation
    if dilation is None:
        prompts = encoded_prompts(target, 1)
        with ModeEngine(target, draft, plan.ssd, 1) as raw_engine:
            raw_engine.warm_up(prompts)
            dilation = dilation_for(raw_engine.run(prompts, 24), PROFILE)
    return f"{PROFILE}:x{dilation:g}"


def speed_table(target: Path, draft: Path, plan: DemoPlan, profile: str | None) -> SpeedTable:
    """Measure AR, SD at each K of ``plan.sd_ks`` and SSD on the plan's prompts, batch 1,
    alternating ``plan.repeats`` times."""
    prompts = encoded_prompts(target, plan.prompts)
    setups = [ModeSetup("ar"), *(ModeSetup("sd", k) for k in plan.sd_ks), plan.ssd]
    engines: list[ModeEngine] = []
    try:
        for setup in setups:
            engines.append(ModeEngine(target, draft, setup, 1, profile))
            engines[-1].warm_up(prompts)
        results = alternate(engines, prompts, plan.new_tokens, plan.repeats)
    finally:
        for engine in engines:
            engine.close()
    return SpeedTable(results[0], results[1:-1], results[-1], profile, len(prompts) * plan.new_tokens * plan.repeats)


def stream_from_stack(target: Path, draft: Path, ssd: ModeSetup, prompt: str, max_tokens: int,
                      emulate: str | None, out: TextIO, verbose: bool = False) -> dict:
    """Start ``saguaro up --mode ssd`` (gateway, target and draft services) on free ports, stream
    one completion through the gateway to ``out`` as it arrives, stop the stack; return the
    request's stats."""
    from saguaro.local_stack import LocalStack
    from saguaro.client import Client
    from saguaro.net import free_port

    extra = ["--kv-cache-bytes", str(64 << 20), "--metrics-port", "0", "--k", str(ssd.k),
             "--fan-out", str(ssd.fan_out), "--backup", ssd.backup]
    if emulate:
        extra += ["--emulate", emulate]
    stack = LocalStack(str(target), str(draft), mode="ssd", port=free_port(), http_port=free_port(),
                       draft_port=free_port(), extra_args=extra, echo=verbose,
                       target_args=["--speculation-policy", "always"])
    started = time.monotonic()
    try:
        stack.start(timeout=120)
        print(f"stack up in {time.monotonic() - started:.1f} s: gateway {stack.endpoint} (gRPC) and {stack.http_url} "
              f"(OpenAI), target {stack.target_address}, draft {stack.draft_address}", file=out, flush=True)
        print("-" * 72, file=out)
        dim, plain = ("\033[2m", "\033[0m") if out.isatty() else ("", "")
        out.write(f"{dim}{prompt}{plain}")  # the prompt dimmed on a terminal, the completion as it streams
        with Client(stack.endpoint) as client:
            stream = client.stream(prompt, max_tokens=max_tokens, ignore_eos=True)
            for delta in stream:
                out.write(delta.text)
                out.flush()
            result = stream.result
        print("\n" + "-" * 72, file=out, flush=True)
    finally:
        stack.stop()
    return result


def run_demo(plan: DemoPlan, out: TextIO = sys.stdout, verbose: bool = False) -> SpeedTable:
    target, draft = demo_pair()
    training = json.loads((DEMO_PAIR / "TRAINING.json").read_text())
    print(f"Saguaro demo. Bundled pair: {DEMO_PAIR}\n  trained on {training['corpus']};\n"
          f"  target {training['target']['parameters'] / 1e6:.1f}M and draft {training['draft']['parameters'] / 1e6:.1f}M "
          f"parameters; the draft agrees with the target's greedy token {training['greedy_agreement_held_out']:.0%} of "
          "the time on held-out code.\n", file=out, flush=True)
    if plan.emulate:
        print(f"calibrating the emulation of {PROFILE} on this machine ...", file=out, flush=True)
    profile = emulation_profile(target, draft, plan)
    print(f"[1/2] saguaro up --mode ssd{' --emulate ' + profile if profile else ''}: streaming a completion of a "
          "held-out prompt through the gateway ...", file=out, flush=True)
    result = stream_from_stack(target, draft, plan.ssd, demo_prompts(1)[0], plan.stream_tokens, profile, out, verbose)
    stats = result.stats
    print(f"{stats['rounds']} rounds, {stats['tokens_per_round']:.2f} tokens a round, cache hit rate "
          f"{stats['cache_hit_rate']:.2f}, transport {stats['transport']}\n", file=out, flush=True)

    regime = (f"emulating {PROFILE} (target 15 ms a step, draft 2 ms; docs/speculation.md, Emulation)"
              if plan.emulate else "raw CPU timings, no emulation")
    print(f"[2/2] AR, SD and SSD on the same {plan.prompts} prompts, {plan.new_tokens} tokens each, batch 1, "
          f"{plan.repeats} alternating runs, {regime} ...", file=out, flush=True)
    table = speed_table(target, draft, plan, profile)
    if profile and profile != PROFILE:
        print(f"(every step padded to the profile's cost times {profile.split(':x')[1]}, so that this CPU's "
              "real work stays under half of each step: compare the ratios)", file=out)
    print("\n" + table.render(), file=out, flush=True)
    if not plan.emulate:
        print("\n" + RAW_NOTE, file=out, flush=True)
    return table
