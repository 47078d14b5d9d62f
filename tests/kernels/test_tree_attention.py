"""Tree attention kernel vs ``TorchAttention`` on ``tree_step_metadata``'s mask.

The kernel derives each branch's visible entries from (C, j_m, step, K, M); the reference
masks the full scratch context. Outputs agree to fp32 (fp16) rounding, caches bit for bit.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saguaro.attention.kv_store import store_kv
from saguaro.attention.tree_attention import TreeStep, tree_attention
from saguaro.kernels.tree_attention_triton import tree_attention_triton
from saguaro.services.draft.tree import tree_scratch_slots, tree_step_metadata

ATOL = RTOL = 1e-5


@st.composite
def tree_layouts(draw):
    """B sequences of random committed lengths in shuffled physical blocks, M branches with
    random fork depths, one step; caches pre-filled with noise (earlier steps' K/V)."""
    batch, k = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    branches, block_size = draw(st.integers(1, 4)), draw(st.sampled_from([1, 2, 4, 8]))
    kv_heads, group = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    dim = draw(st.sampled_from([4, 5, 8]))
    committed = draw(st.lists(st.integers(1, 12), min_size=batch, max_size=batch))
    needed = [-(-tree_scratch_slots(c, k, branches) // block_size) for c in committed]
    gen = torch.Generator(torch.get_default_device()).manual_seed(draw(st.integers(0, 2**16)))
    pool = torch.randperm(sum(needed) + 3, generator=gen).tolist()
    tables, at = [], 0
    for n in needed:
        tables.append(pool[at : at + n])
        at += n
    fork_depth = torch.randint(0, k + 1, (batch, branches), generator=gen)
    step = draw(st.integers(0, k - 1))
    slots = len(pool) * block_size
    tokens, heads = batch * branches, kv_heads * group
    tensors = {
        "q": torch.randn(tokens, heads, dim, generator=gen),
        "k": torch.randn(tokens, kv_heads, dim, generator=gen),
        "v": torch.randn(tokens, kv_heads, dim, generator=gen),
        "k_cache": torch.randn(slots, kv_heads, dim, generator=gen),
        "v_cache": torch.randn(slots, kv_heads, dim, generator=gen),
    }
    tree = TreeStep.build(tables, committed, fork_depth, k, step, block_size)
    meta, _ = tree_step_metadata(tables, committed, fork_depth, k, step, block_size)
    return tensors, meta, tree, dim**-0.5


def reference(tensors: dict[str, torch.Tensor], meta, scale: float):
    """TorchAttention on copies: (output, k_cache, v_cache) after the step."""
    t = {name: x.clone() for name, x in tensors.items()}
    out = tree_attention(t["q"], t["k"], t["v"], t["k_cache"], t["v_cache"], meta, scale, tree=None, backend="torch")
    return out, t["k_cache"], t["v_cache"]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(layout=tree_layouts())
def test_tree_attention_matches_reference(launches, layout) -> None:
    tensors, meta, tree, scale = layout
    expected, k_ref, v_ref = reference(tensors, meta, scale)
    t = tensors
    with launches("tree_attention"), launches("store_kv"):
        got = tree_attention(t["q"], t["k"], t["v"], t["k_cache"], t["v_cache"], meta, scale, tree=tree, backend="triton")
    assert torch.equal(t["k_cache"], k_ref) and torch.equal(t["v_cache"], v_ref)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(
    layout=tree_layouts(),
    splits=st.integers(1, 3),
    block_n=st.sampled_from([1, 2, 4, 16]),
    max_block_r=st.sampled_from([2, 4, 128]),
)
def test_tree_attention_kernel_tiles(launches, layout, splits, block_n, max_block_r) -> None:
    """Tiles smaller than every region: context tiles cross the prefix / glue / tree
    boundaries, row tiles split the branches, and context splits (some seeing nothing of a
    row, all merged by the second kernel) cut the online softmax."""
    tensors, meta, tree, scale = layout
    expected, _, _ = reference(tensors, meta, scale)
    t = tensors
    store_kv(t["k"], t["v"], t["k_cache"], t["v_cache"], meta, backend="torch")
    with launches("tree_attention"), launches("tree_attention_merge", int(splits > 1)):
        got = tree_attention_triton(
            t["q"], t["k_cache"], t["v_cache"], tree.block_tables, tree.committed_lens, tree.fork_depth,
            tree.k, tree.step, tree.block_size, tree.max_committed, scale,
            splits=splits, block_n=block_n, max_block_r=max_block_r,
        )
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float16, 5e-3)])
def test_steps_of_one_round_share_the_layout(launches, dtype, tolerance) -> None:
    """A whole round: K steps, each writing its tokens and reading all earlier ones, with
    the layout built once and only ``step`` replaced. fp16 runs the 16-bit path (16-bit
    operands and softmax weights into ``tl.dot``) and agrees to fp16 rounding; bf16 takes
    the same path but cannot be checked here: Triton 3.9's interpreter multiplies the raw
    bf16 bit patterns in ``tl.dot``."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(0)
    k, branches, block_size, committed = 3, 4, 4, [6, 3]
    fork_depth = torch.tensor([[0, 1, 1, 3], [0, 2, 3, 3]])
    tables = [[5, 0, 7, 2, 9, 10], [1, 8, 3, 6, 4]]
    base = TreeStep.build(tables, committed, fork_depth, k, 0, block_size)
    caches = [torch.randn(11 * block_size, 2, 8, generator=gen).to(dtype) for _ in range(2)]
    ref_caches = [c.clone() for c in caches]
    for step in range(k):
        meta, _ = tree_step_metadata(tables, committed, fork_depth, k, step, block_size)
        q, new_k, new_v = (torch.randn(8, n, 8, generator=gen).to(dtype) for n in (4, 2, 2))
        expected = tree_attention(q, new_k, new_v, *ref_caches, meta, 0.3, tree=None, backend="torch")
        with launches("tree_attention"):
            got = tree_attention(
                q, new_k, new_v, *caches, meta, 0.3, tree=dataclasses.replace(base, step=step), backend="triton"
            )
        torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    assert all(torch.equal(a, b) for a, b in zip(caches, ref_caches))
