"""Run every Triton kernel through Triton's interpreter on CPU tensors, or compiled on a GPU.

``TRITON_INTERPRET`` is read when a ``@triton.jit`` function is defined, so it is set here,
at collection time, before any test imports a ``saguaro.kernels.*_triton`` module (the
dispatch imports them lazily, and nothing outside these tests imports them at all).

``SAGUARO_KERNEL_DEVICE=cuda`` (scripts/gpu-check on a GPU machine) makes CUDA the default
device instead, so the same tests compile the kernels for the GPU and compare them with their
torch references there.
"""

from __future__ import annotations

import os

import torch

KERNEL_DEVICE = os.environ.get("SAGUARO_KERNEL_DEVICE", "cpu")
if KERNEL_DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"
else:
    torch.set_default_device(KERNEL_DEVICE)

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from saguaro.kernels.dispatch import launch_counts


@pytest.fixture(scope="session")
def launches() -> Callable[[str, int], AbstractContextManager[None]]:
    """``with launches("verify", 1): ...`` fails unless the block launched exactly that many
    Triton kernels of that name — a silent fallback to the torch reference would otherwise
    pass every equality check. Stateless (counts are read on entry), hence session scope,
    which also lets hypothesis tests use it."""

    @contextmanager
    def expect(kernel: str, count: int = 1) -> Iterator[None]:
        before = launch_counts[kernel]
        yield
        assert launch_counts[kernel] - before == count, f"expected {count} Triton launch(es) of {kernel}"

    return expect
