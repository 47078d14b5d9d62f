"""Which implementation of a kernel runs: the Triton kernel or its torch reference.

The dispatch functions that apply this rule live beside their torch references
(``saguaro.attention.kv_store``, ``saguaro.attention.tree_attention``,
``saguaro.speculative.fused_verify``, ``saguaro.speculative.fork``); this module, like every
module of ``saguaro.kernels``, imports nothing above it (docs/kernels.md).

Production rule: Triton on CUDA tensors (when Triton is installed), the torch reference
everywhere else — the reference *is* the CPU path of the engine, so CPU behaviour never
depends on Triton being installed or even importable. ``backend="triton"`` forces the
Triton kernel on any device; on CPU tensors that only works under Triton's interpreter
(``TRITON_INTERPRET=1`` set before the kernel modules are imported), which is how the tests
run every kernel on a machine without a GPU.

``launch_counts`` counts Triton launches per kernel name. It exists so tests can prove the
Triton path was taken (a silent fallback to the reference would otherwise pass every
equality check) and so the benchmark can report what ran.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from functools import cache
from typing import Literal

import torch

Backend = Literal["auto", "torch", "triton"]

launch_counts: Counter[str] = Counter()


def record_launch(kernel: str) -> None:
    """Called by every Triton launcher right before it launches ``kernel``."""
    launch_counts[kernel] += 1


@cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreter_active() -> bool:
    from triton import knobs

    return bool(knobs.runtime.interpret)


def use_triton(backend: Backend, device: torch.device) -> bool:
    """True when the Triton kernel should run for tensors on ``device``."""
    if backend == "torch":
        return False
    if backend == "auto":
        return device.type == "cuda" and triton_available()
    if backend != "triton":
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    if not triton_available():
        raise RuntimeError("backend='triton' needs the triton package (pip install 'saguaro[gpu]')")
    if device.type != "cuda" and not _interpreter_active():
        raise RuntimeError(
            f"backend='triton' on {device.type} tensors needs Triton's interpreter: set "
            "TRITON_INTERPRET=1 before the kernel modules are imported"
        )
    return True
