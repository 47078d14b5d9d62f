"""Emulated accelerator timings for benchmarks on CPU-only machines.

SSD's advantage comes from overlapping the draft's work with the target's verification, so it
depends on the *ratio* of their step times. On a CPU the tiny benchmark models have the wrong
ratio and the wrong absolute times. A profile gives each model a cost per *device step*, and
the engine pads every step to that cost with a sleep: real tokens and the real protocol at
accelerator-like costs. What it models and what it does not (docs/speculation.md, "Emulation"):

* A device step is everything a CUDA graph makes one launch on a GPU: the step's metadata,
  the forward, the sampling and, for the draft's glue, the fork. It is padded as one unit
  (``ModelRunner.device_step``). Host work between steps (scheduling, transport, the Python of
  the round loop) is not padded: it counts in full, as it would on a GPU host.
* A step of n tokens costs ``T(n) = T0 * max(1, n / knee)``: flat while the step is bound by
  reading weights, linear once it is compute-bound.
* A step whose real CPU work takes longer than its pad is not shortened, so an overloaded CPU
  shows up as a slower result, never a flattering one. A dilation factor ``s`` multiplies every
  pad (``PROFILE:xS``), so that real CPU work can be kept well under each pad; ratios between
  modes are unchanged by ``s``, and host overheads then weigh ``s`` times less than on the GPU.

Profiles measured on a GPU by ``scripts/gpu-check`` are JSON files in saguaro/assets/profiles
(``profile_json`` writes them); they join the built-in ones by their file name.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from saguaro.errors import ConfigError


@dataclass(frozen=True)
class StepCost:
    """``T(n) = base_s * max(1, n / knee)`` seconds for a device step of n tokens (flat without a knee)."""

    base_s: float
    knee: int | None = None

    def seconds(self, tokens: int) -> float:
        if self.knee is None:
            return self.base_s
        return self.base_s * max(1.0, tokens / self.knee)

    def dilated(self, factor: float) -> StepCost:
        return StepCost(self.base_s * factor, self.knee)


@dataclass(frozen=True)
class Profile:
    target: StepCost
    draft: StepCost

    def dilated(self, factor: float) -> Profile:
        return Profile(self.target.dilated(factor), self.draft.dilated(factor))

    def cost(self, role: str) -> StepCost:
        if role not in ("target", "draft"):
            raise ValueError(f"role must be 'target' or 'draft', not {role!r}")
        return self.target if role == "target" else self.draft


PROFILES: dict[str, Profile] = {
    # roughly a 70B target tensor-parallel on 4 H100s (15 ms a step up to ~300 tokens) with a 1B
    # draft on a fifth (2 ms up to ~256 tokens)
    "h100-70b-1b": Profile(target=StepCost(0.015, knee=300), draft=StepCost(0.002, knee=256)),
}


MEASURED_PROFILES = Path(__file__).parent / "assets" / "profiles"


def profile_json(profile: Profile, measured_on: str) -> str:
    """A measured profile as saguaro/assets/profiles/NAME.json holds it."""
    def cost(c: StepCost) -> dict:
        return {"base_s": c.base_s, "knee": c.knee}

    return json.dumps({"measured_on": measured_on, "target": cost(profile.target), "draft": cost(profile.draft)},
                      indent=2) + "\n"


def _load_profile(path: Path) -> Profile:
    try:
        raw = json.loads(path.read_text())
        costs = [StepCost(float(raw[role]["base_s"]), raw[role]["knee"]) for role in ("target", "draft")]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"emulation profile {path} is not a measured profile (target and draft, each with "
                          f"base_s and knee; scripts/gpu-check writes them): {exc!r}") from None
    if any(not (0 < c.base_s < math.inf) or (c.knee is not None and not (isinstance(c.knee, int) and c.knee > 0))
           for c in costs):
        raise ConfigError(f"emulation profile {path}: base_s must be a positive number of seconds and knee a "
                          f"positive integer or null")
    return Profile(*costs)


def known_profiles() -> dict[str, Profile]:
    """The built-in profiles and those measured on GPUs (saguaro/assets/profiles/*.json)."""
    measured = sorted(MEASURED_PROFILES.glob("*.json")) if MEASURED_PROFILES.is_dir() else []
    return {**PROFILES, **{path.stem: _load_profile(path) for path in measured}}


def parse_emulate(spec: str) -> tuple[Profile, float]:
    """``PROFILE`` or ``PROFILE:xS`` (e.g. ``h100-70b-1b:x4``) -> the profile and the dilation S."""
    name, _, dilation = spec.partition(":")
    profiles = known_profiles()
    if name not in profiles:
        raise ConfigError(f"unknown emulation profile {name!r}; known: {', '.join(sorted(profiles))}")
    if not dilation:
        return profiles[name], 1.0
    try:
        factor = float(dilation[1:]) if dilation.startswith("x") else math.nan
    except ValueError:
        factor = math.nan
    if not 1 <= factor < math.inf:
        raise ConfigError(f"--emulate {spec!r}: the dilation is written xS with S >= 1 (e.g. {name}:x4)")
    return profiles[name], factor


def engine_fields(spec: str | None, role: str) -> dict:
    """``EngineConfig`` keyword arguments that emulate ``spec`` (``PROFILE[:xS]``) for ``role``."""
    if not spec:
        return {}
    profile, dilation = parse_emulate(spec)
    cost = profile.dilated(dilation).cost(role)
    return {"emulate_forward_s": cost.base_s, "emulate_knee_tokens": cost.knee}


def pad_to(deadline: float) -> None:
    """Sleep until ``deadline`` (perf_counter seconds); return at once if it has passed."""
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        time.sleep(remaining)
