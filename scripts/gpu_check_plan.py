"""scripts/gpu-check's plan and report: the shapes of a run (the GPU's or the dry run's) and the
steps' results, written after every step so a run cut short still leaves its findings."""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Shapes:
    """Model shapes and workloads of one run: the GPU's, or the dry run's tiny ones."""

    device: str
    target: dict  # build_tiny_model arguments of the calibration target
    draft: dict
    step_tokens: tuple[int, ...]  # tokens per calibrated step
    context: int  # cached tokens each calibrated sequence attends to
    repeats: int  # timed repetitions per calibrated point
    peer_batches: tuple[int, ...]
    peer_tokens: int
    exact_prompts: int
    exact_tokens: int
    # the kernel tests the kernels step runs: all of them on the GPU; on the dry run one file proves
    # the step works (the suite runs tests/kernels itself, under Triton's interpreter)
    kernel_tests: tuple[str, ...] = ("tests/kernels",)


GPU = Shapes(
    device="cuda",
    # Llama-3-8B and Llama-3.2-1B shapes (vocabulary 128256), random weights
    target=dict(vocab_size=128256, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=8,
                intermediate_size=14336, tie_word_embeddings=False, max_position_embeddings=4096),
    draft=dict(vocab_size=128256, hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, head_dim=64,
               intermediate_size=8192, tie_word_embeddings=True, max_position_embeddings=4096),
    step_tokens=(1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 320, 384, 448, 512),
    context=256, repeats=20, peer_batches=(1, 8), peer_tokens=64, exact_prompts=6, exact_tokens=24,
)
DRY = Shapes(
    device="cpu",
    target=dict(vocab_size=500, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128),
    draft=dict(vocab_size=500, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64),
    step_tokens=(1, 2, 4, 8), context=24, repeats=2, peer_batches=(1, 2), peer_tokens=6, exact_prompts=3,
    exact_tokens=8, kernel_tests=("tests/kernels/test_kv_store.py",),
)


@dataclass
class Step:
    name: str
    status: str = "not run"  # passed | failed | error | not run
    seconds: float = 0.0
    findings: dict = field(default_factory=dict)
    error: str = ""


class Check:
    def __init__(self, shapes: Shapes, out: Path, deadline: float, work: Path):
        self.shapes, self.out, self.deadline, self.work = shapes, out, deadline, work
        self.steps: list[Step] = []

    def run(self, name: str, fn) -> Step:
        step = Step(name)
        self.steps.append(step)
        if time.monotonic() > self.deadline:
            step.error = "skipped: the time limit was reached"
            self.write()
            return step
        started = time.monotonic()
        print(f"gpu-check: {name} ...", flush=True)
        try:
            passed = fn(step.findings)
            step.status = "passed" if passed else "failed"
        except Exception:  # a step's failure is a finding; the other steps still run
            step.status = "error"
            step.error = traceback.format_exc(limit=8)
        step.seconds = round(time.monotonic() - started, 1)
        print(f"gpu-check: {name}: {step.status} in {step.seconds} s", flush=True)
        self.write()
        return step

    def write(self) -> None:
        results = [step.__dict__ for step in self.steps]
        (self.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        lines = ["# gpu-check", "", "| step | status | seconds |", "|---|---|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds} |" for s in self.steps]
        for s in self.steps:
            lines += ["", f"## {s.name}: {s.status}", ""]
            lines += [f"- {key}: {value}" for key, value in s.findings.items()]
            if s.error:
                lines += ["", "```", s.error.rstrip(), "```"]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")
