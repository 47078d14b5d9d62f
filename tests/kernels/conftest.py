"""Run every Triton kernel through Triton's interpreter on CPU tensors.

``TRITON_INTERPRET`` is read when a ``@triton.jit`` function is defined, so it is set here,
at collection time, before any test imports a ``saguaro.kernels.*_triton`` module (the
dispatch imports them lazily, and nothing outside these tests imports them at all).
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

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
