"""Paged KV store kernel vs ``saguaro.attention.kv_store.store_kv_reference``: caches bit-identical."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saguaro.attention import AttentionMetadata
from saguaro.attention.kv_store import store_kv, store_kv_reference


def write_only_metadata(slot_mapping: torch.Tensor) -> AttentionMetadata:
    """Metadata of which a store reads only the slots."""
    one = torch.zeros(1, 1, dtype=torch.long)
    return AttentionMetadata(
        slot_mapping=slot_mapping,
        context_slots=one,
        query_index=one,
        query_valid=torch.ones(1, 1, dtype=torch.bool),
        mask=None,
        writes_all=bool((slot_mapping >= 0).all()),
    )


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    tokens=st.integers(0, 6),
    heads=st.integers(1, 3),
    dim=st.integers(1, 9),
    spare_slots=st.integers(0, 6),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    strided=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_store_kv_matches_reference(launches, tokens, heads, dim, spare_slots, dtype, strided, seed) -> None:
    gen = torch.Generator(torch.get_default_device()).manual_seed(seed)
    num_slots = tokens + spare_slots
    slots = torch.randperm(num_slots, generator=gen)[:tokens]
    skipped = torch.rand(tokens, generator=gen) < 0.3
    slots = torch.where(skipped, -1, slots)
    # Strided K/V as the model produces them: views into one fused qkv row per token.
    width = 3 * heads * dim if strided else 2 * heads * dim
    fused = torch.randn(tokens, width, generator=gen).to(dtype)
    k = fused[:, : heads * dim].view(tokens, heads, dim)
    v = fused[:, width - heads * dim :].view(tokens, heads, dim)
    k_ref = torch.randn(num_slots, heads, dim, generator=gen).to(dtype)
    v_ref = torch.randn(num_slots, heads, dim, generator=gen).to(dtype)
    k_out, v_out = k_ref.clone(), v_ref.clone()
    meta = write_only_metadata(slots)

    store_kv_reference(k, v, k_ref, v_ref, meta)
    with launches("store_kv", 1 if tokens else 0):
        store_kv(k, v, k_out, v_out, meta, backend="triton")
    assert torch.equal(k_out, k_ref)
    assert torch.equal(v_out, v_ref)
