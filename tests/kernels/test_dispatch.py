"""The dispatch rule, and proof that the kernel tests really run Triton's interpreter."""

from __future__ import annotations

import pytest
import torch
from triton import knobs
from triton.runtime.interpreter import InterpretedFunction

from saguaro.attention.kv_store import store_kv
from saguaro.attention.tree_attention import tree_attention
from saguaro.kernels.dispatch import launch_counts, use_triton
from saguaro.kernels.fork_triton import _fork_kernel
from saguaro.kernels.kv_store_triton import _store_kv_kernel
from saguaro.kernels.tree_attention_triton import _tree_attention_kernel
from saguaro.kernels.verify_triton import _verify_kernel
from saguaro.services.draft.tree import tree_step_metadata
from saguaro.speculative.fork import fork_candidates
from saguaro.speculative.fused_verify import fused_verify


def test_every_kernel_is_interpreted() -> None:
    for kernel in (_store_kv_kernel, _verify_kernel, _fork_kernel, _tree_attention_kernel):
        assert isinstance(kernel, InterpretedFunction), kernel


def test_auto_runs_the_reference_on_cpu() -> None:
    cpu = torch.device("cpu")
    assert not use_triton("auto", cpu)
    assert not use_triton("torch", cpu)
    assert use_triton("triton", cpu)  # only because the interpreter is on
    before = dict(launch_counts)
    logits = torch.randn(2, 3, 5)
    tokens = torch.zeros(2, 2, dtype=torch.long)
    fused_verify(logits, tokens, None, 0.0, torch.zeros(2, 2), torch.zeros(2))
    fork_candidates(logits, tokens, [1, 1, 1])
    fork_depth = torch.tensor([[0, 2]])
    meta, _ = tree_step_metadata([[0, 1, 2]], [3], fork_depth, 2, 0, 4)
    q, k, v = torch.randn(2, 2, 4), torch.randn(2, 1, 4), torch.randn(2, 1, 4)
    caches = torch.zeros(12, 1, 4), torch.zeros(12, 1, 4)
    store_kv(k, v, *caches, meta)
    tree_attention(q, k, v, *caches, meta, 0.5, tree=None)
    assert dict(launch_counts) == before


def test_auto_picks_triton_on_cuda() -> None:
    assert use_triton("auto", torch.device("cuda"))


def test_triton_on_cpu_needs_the_interpreter() -> None:
    with knobs.runtime.scope():
        knobs.runtime.interpret = False
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
            use_triton("triton", torch.device("cpu"))


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="backend"):
        use_triton("cuda", torch.device("cpu"))  # type: ignore[arg-type]
