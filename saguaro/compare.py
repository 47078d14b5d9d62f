"""AR, synchronous SD and SSD side by side on the same prompts, in one process.

The demo's speed table and ``bench/speculative.py`` both measure through this module, so what
a newcomer sees and what the benchmark reports are the same measurement. The target engine runs
in this process; SSD's draft is a ``saguaro draft`` service in a second process, pinned to its
own core; SD keeps its draft in the target's process, as the synchronous baseline does.
An engine stays up between timed runs, so that runs of several modes can alternate: on a
shared machine the speed drifts over minutes, and alternating spreads that drift over every
mode alike. docs/speculation.md explains the modes; saguaro/emulation.py the ``profile``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from saguaro.errors import SaguaroError
from saguaro.net import free_port
from saguaro.speculative.costs import bucket_of

BACKUP_POLICIES = ("jit", "fast", "adaptive")


@dataclass(frozen=True)
class ModeSetup:
    """One way to decode: ``mode`` ar, sd or ssd; K draft tokens a round; SSD's fan-out F and
    its backup policy on a cache miss (docs/speculation.md)."""

    mode: str
    k: int = 0
    fan_out: int = 1
    backup: str = "jit"

    @property
    def label(self) -> str:
        if self.mode == "ar":
            return "AR"
        if self.mode == "sd":
            return f"SD K={self.k}"
        return f"SSD K={self.k} F={self.fan_out} {self.backup}"


@dataclass
class ModeResult:
    """One timed run of a mode over a batch of prompts, with its per-round breakdown."""

    setup: ModeSetup
    batch: int
    profile: str | None  # the emulation profile PROFILE[:xS], None: raw timings
    tokens_per_s: float
    seconds: float
    rounds: int  # decode rounds of the batch (each advances every running row)
    tokens_per_round: float = 0.0  # per row and round
    acceptance: list[float] = field(default_factory=list)  # P(draft token i accepted), i = 1..K
    hit_rate: float = 0.0  # SSD: share of row lookups answered from the speculation cache
    jit: int = 0  # SSD backups drafted just in time
    fast: int = 0  # SSD backups sent as placeholders
    transport: str = "none"
    verify_s: float = 0.0  # per round: the target's verify step and its bookkeeping
    draft_wait_s: float = 0.0  # per round: the target waiting for the draft's reply
    build_s: float = 0.0  # per round: the draft's cache build (SSD)
    policy_ar_rounds: int = 0  # row rounds the governor ran plainly
    policy_sd_rounds: int = 0  # row rounds the governor ran as synchronous SD on the SSD draft
    row_rounds: int = 0
    outputs: list[list[int]] = field(default_factory=list, repr=False)

    @classmethod
    def from_outputs(cls, setup: ModeSetup, batch: int, profile: str | None, outputs, seconds: float,
                     rounds: int) -> ModeResult:
        stats = [o.stats for o in outputs]
        row_rounds = sum(s.get("rounds", 0) for s in stats)
        spec_rounds = sum(s.get("spec_rounds", 0) for s in stats)
        accepted = [sum(s["accepted_per_position"][i] for s in stats if s.get("accepted_per_position"))
                    for i in range(setup.k)]
        hits = sum(s.get("cache_hits", 0) for s in stats)
        lookups = hits + sum(s.get("cache_misses", 0) for s in stats)

        def per_round(key: str) -> float:
            return sum(s.get(key, 0.0) for s in stats) / row_rounds if row_rounds else 0.0

        return cls(
            setup, batch, profile, sum(len(o.token_ids) for o in outputs) / seconds, seconds, rounds,
            tokens_per_round=per_round("tokens_from_rounds"),
            acceptance=[round(a / spec_rounds, 3) for a in accepted] if spec_rounds else [],
            hit_rate=hits / lookups if lookups else 0.0,
            jit=sum(s.get("backups_jit", 0) for s in stats),
            fast=sum(s.get("backups_fast", 0) for s in stats),
            transport=stats[0].get("transport", "none") if stats else "none",
            verify_s=per_round("verify_time_s"), draft_wait_s=per_round("draft_time_s"),
            build_s=per_round("draft_build_time_s"),
            policy_ar_rounds=sum(s.get("policy_rounds", 0) for s in stats),
            policy_sd_rounds=sum(s.get("sync_rounds", 0) for s in stats),
            row_rounds=row_rounds,
            outputs=[o.token_ids for o in outputs],
        )

    def arm_shares(self) -> tuple[float, float, float]:
        """Shares of the row rounds run as AR, SD and SSD under a governor (SSD deployment)."""
        if not self.row_rounds:
            return 0.0, 0.0, 0.0
        ar, sd = self.policy_ar_rounds / self.row_rounds, self.policy_sd_rounds / self.row_rounds
        return ar, sd, 1.0 - ar - sd


def machine_cores() -> list[int]:
    """The cores this process may run on (all of them where affinity is unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


class DraftService:
    """A ``saguaro draft`` process on a free port, pinned to ``core`` with one thread; a
    context manager that kills it on exit."""

    def __init__(self, model: str | Path, setup: ModeSetup, emulate: str | None = None, core: int | None = None,
                 kv_cache_bytes: int = 1 << 28, startup_timeout: float = 120.0):
        port = free_port()
        cmd = [sys.executable, "-m", "saguaro.cli", "draft", "--model", str(model), "--port", str(port),
               "--k", str(setup.k), "--fan-out", str(setup.fan_out), "--backup", setup.backup,
               "--kv-cache-bytes", str(kv_cache_bytes), "--metrics-port", "0"]
        if emulate:
            cmd += ["--emulate", emulate]
        pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None and hasattr(os, "sched_setaffinity") else None
        self.proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, preexec_fn=pin)
        self.address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + startup_timeout
        lines: list[str] = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if " listening on " in line:
                return
        self.close()
        raise SaguaroError("the draft service did not start:\n" + "".join(lines[-20:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()

    def __enter__(self) -> DraftService:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ModeEngine:
    """One mode's engine over the pair, kept up between timed runs; SSD starts its draft
    service (``draft_workers`` of them share the batch) on ``draft_core`` (default: the last
    core this process may use; a caller that pins itself first must pass it).

    ``profile``: ``--emulate``'s PROFILE[:xS] (None: raw timings); ``transport``: "unix",
    "torch.distributed" or "grpc" between target and SSD draft; ``governor``: the target's
    speculation governor (None: speculate every round)."""

    def __init__(self, target: str | Path, draft: str | Path, setup: ModeSetup, batch: int,
                 profile: str | None = None, transport: str = "unix", governor=None, draft_workers: int = 1,
                 draft_core: int | None = None):
        from saguaro.config import EngineConfig
        from saguaro.emulation import engine_fields
        from saguaro.llm import LLM
        from saguaro.speculative.settings import DraftSettings
        from saguaro.services.target.local import speculative_engine
        from saguaro.v1 import speculation_pb2 as pb
        from saguaro.wire import MODES

        if setup.mode not in MODES:
            raise SaguaroError(f"unknown mode {setup.mode!r}; use ar, sd or ssd")
        if setup.backup not in BACKUP_POLICIES:
            raise SaguaroError(f"unknown backup policy {setup.backup!r}; use one of {', '.join(BACKUP_POLICIES)}")
        self.setup, self.batch, self.profile = setup, batch, profile
        common = dict(max_num_seqs=batch, kv_cache_bytes=1 << 28, show_progress=False)
        target_config = EngineConfig(model=str(target), **engine_fields(profile, "target"), **common)
        draft_config = EngineConfig(model=str(draft), **engine_fields(profile, "draft"), **common)
        policy = {"jit": pb.BACKUP_POLICY_JIT, "fast": pb.BACKUP_POLICY_FAST, "adaptive": pb.BACKUP_POLICY_ADAPTIVE}
        settings = DraftSettings(k=max(setup.k, 1), fan_out=setup.fan_out if setup.mode == "ssd" else 1,
                                 backup_policy=policy[setup.backup])
        self.drafts: list[DraftService] = []
        addresses = None
        if setup.mode == "ssd":
            core = machine_cores()[-1] if draft_core is None else draft_core
            self.drafts = [DraftService(draft, setup, profile, core) for _ in range(draft_workers)]
            addresses = [d.address for d in self.drafts]
        self.engine = speculative_engine(target_config, setup.mode, draft_config if setup.mode == "sd" else None,
                                         settings, draft_address=addresses,
                                         fast_path=None if transport == "grpc" else transport, governor=governor)
        self.llm = LLM.from_engine(self.engine, None)
        self.last_rounds = 0
        self.branches: dict[int, int] = {}  # per batch-size bucket: branches per row of the draft's last build
        decode = self.engine._decode

        def counted(seqs) -> None:  # a decode step advances every running row: one round of the batch
            self.last_rounds += 1
            decode(seqs)
            proposer = self.engine.proposer
            timings = proposer.last_timings if proposer is not None else None
            if timings is not None and timings.prev_build_branches:
                self.branches[bucket_of(len(seqs))] = timings.prev_build_branches

        self.engine._decode = counted

    def timed(self, prompts: list[list[int]], new_tokens: int, **sampling) -> tuple[list, float, int]:
        """Decode ``new_tokens`` greedily (EOS ignored) for every prompt: (outputs, seconds, rounds).
        ``sampling``: further ``SamplingParams`` fields (a grammar, say), the same for every prompt."""
        from saguaro import SamplingParams

        self.last_rounds = 0
        start = time.perf_counter()
        outputs = self.llm.generate(prompts, SamplingParams(max_tokens=new_tokens, ignore_eos=True, **sampling))
        return outputs, time.perf_counter() - start, self.last_rounds

    def run(self, prompts: list[list[int]], new_tokens: int, **sampling) -> ModeResult:
        """One timed run of every prompt (``sampling``: as ``timed``'s)."""
        return ModeResult.from_outputs(self.setup, self.batch, self.profile, *self.timed(prompts, new_tokens, **sampling))

    def warm_up(self, prompts: list[list[int]]) -> None:
        """A short untimed request: first-call costs stay out of the timed runs."""
        self.timed(prompts[:1], 8)

    def close(self) -> None:
        if self.engine.proposer is not None:
            self.engine.proposer.close()
        for draft in self.drafts:
            draft.close()

    def __enter__(self) -> ModeEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def alternate(engines: list[ModeEngine], prompts: list[list[int]], new_tokens: int, repeats: int) -> list[ModeResult]:
    """Time every engine on ``prompts`` in turn, ``repeats`` times over; each result sums its
    engine's runs (outputs of every repeat, total seconds and rounds)."""
    runs: list[tuple[list, float, int]] = [([], 0.0, 0) for _ in engines]
    for _ in range(repeats):
        for i, engine in enumerate(engines):
            outputs, seconds, rounds = engine.timed(prompts, new_tokens)
            runs[i] = (runs[i][0] + outputs, runs[i][1] + seconds, runs[i][2] + rounds)
    return [ModeResult.from_outputs(e.setup, e.batch, e.profile, *run) for e, run in zip(engines, runs)]


def dilation_for(raw: ModeResult, profile_name: str) -> float:
    """The dilation S that keeps every device step's real CPU work under half of its pad.

    ``raw`` is an SSD run without emulation at the batch size and fan-out to emulate. It
    measures the real work per round: the target's verify step, and the draft's build (glue
    and fork, then K tree steps: K + 1 device steps). S is the smallest multiple of 0.5, at
    least 1, at which each is at most half of its cost in the profile (docs/speculation.md,
    "Emulation")."""
    from saguaro.emulation import parse_emulate

    if raw.setup.mode != "ssd" or raw.profile:
        raise ValueError("calibrate the dilation from a raw SSD run")
    profile, _ = parse_emulate(profile_name)
    k, batch = raw.setup.k, raw.batch
    step_s = raw.build_s / (k + 1)
    tree_tokens = batch * raw.setup.fan_out * (k + 1)
    need = max(2 * step_s / profile.draft.seconds(tree_tokens),
               2 * raw.verify_s / profile.target.seconds(batch * (k + 1)), 1.0)
    return math.ceil(need * 2) / 2
