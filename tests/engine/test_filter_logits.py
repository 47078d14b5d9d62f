"""filter_logits against a plain per-row reference: temperature, then top-k, then top-p on what
top-k kept, then renormalisation — with the edges the sampler meets (k = 1, k past the vocab,
p = 1 over a large vocab, ties, masked -inf tokens) and different parameters per row.

Sampled speculative decoding is exact only if draft and target filter with the same law, so the
batched, sorted implementation must agree with the obvious one row by row.
"""

from __future__ import annotations

import math

import pytest
import torch

from saguaro.sampling import filter_logits


def reference_probs(row: list[float], temperature: float, top_k: int, top_p: float) -> list[float]:
    """The definition, in float64 and one row at a time (rows here have no ties)."""
    scaled = [x / temperature for x in row]
    order = sorted(range(len(row)), key=lambda i: scaled[i], reverse=True)
    kept = [i for i in order[: top_k or len(row)] if scaled[i] != -math.inf]
    top = max(scaled[i] for i in kept)
    weights = {i: math.exp(scaled[i] - top) for i in kept}
    if top_p < 1:
        total = sum(weights.values())
        mass_before, nucleus = 0.0, {}
        for i in kept:  # most likely first: keep tokens until the mass reaches p
            if mass_before >= top_p:
                break
            nucleus[i] = weights[i]
            mass_before += weights[i] / total
        weights = nucleus
    total = sum(weights.values())
    return [weights.get(i, 0.0) / total for i in range(len(row))]


def run(logits: torch.Tensor, temperature: list[float], top_k: list[int], top_p: list[float]) -> torch.Tensor:
    return filter_logits(
        logits,
        torch.tensor(temperature, dtype=torch.float32),
        torch.tensor(top_k, dtype=torch.long),
        torch.tensor(top_p, dtype=torch.float32),
    )


def distinct_logits(rows: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Random logits without ties, so the reference and the sort keep the same tokens."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(vocab, generator=gen).float() * 0.37 for _ in range(rows)])


def assert_matches_reference(logits, temperature, top_k, top_p):
    probs = run(logits, temperature, top_k, top_p)
    expected = torch.tensor(
        [reference_probs(row, t, k, p) for row, t, k, p in zip(logits.tolist(), temperature, top_k, top_p)],
        dtype=torch.float32,
    )
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(probs > 0, expected > 0)  # the same support, not just close numbers


# -- temperature ------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.25, 1.0, 3.0])
def test_temperature_alone_is_a_scaled_softmax(temperature):
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 4.0]])
    probs = run(logits, [temperature], [0], [1.0])
    torch.testing.assert_close(probs, (logits / temperature).softmax(-1))


def test_lower_temperature_sharpens_towards_the_argmax():
    logits = torch.tensor([[1.0, 2.0, 3.0]] * 3)
    probs = run(logits, [0.1, 1.0, 10.0], [0, 0, 0], [1.0, 1.0, 1.0])
    assert probs[0, 2] > probs[1, 2] > probs[2, 2] > 1 / 3


# -- top-k ------------------------------------------------------------------------------


def test_top_k_one_is_the_argmax_alone():
    logits = distinct_logits(4, 50)
    probs = run(logits, [0.7] * 4, [1] * 4, [1.0] * 4)
    assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 50).float())


@pytest.mark.parametrize("top_k", [2, 7, 49])
def test_top_k_keeps_the_k_largest_renormalised(top_k):
    assert_matches_reference(distinct_logits(3, 50, seed=top_k), [0.8, 1.0, 1.5], [top_k] * 3, [1.0] * 3)


@pytest.mark.parametrize("top_k", [50, 51, 10_000])
def test_top_k_at_or_past_the_vocab_keeps_everything(top_k):
    logits = distinct_logits(2, 50)
    torch.testing.assert_close(run(logits, [1.0, 1.0], [top_k, top_k], [1.0, 1.0]), logits.softmax(-1))


def test_tied_logits_at_the_top_k_boundary_keep_exactly_k_of_them():
    logits = torch.tensor([[5.0, 1.0, 3.0, 3.0, 3.0, 0.0]])
    probs = run(logits, [1.0], [2], [1.0])[0]
    kept = probs.nonzero().flatten().tolist()
    assert len(kept) == 2 and 0 in kept and set(kept) - {0} <= {2, 3, 4}
    expected_pair = torch.tensor([5.0, 3.0]).softmax(-1)
    torch.testing.assert_close(probs[kept].sort(descending=True).values, expected_pair)


def test_a_tie_for_the_top_token_with_k_one_keeps_one_of_the_tied():
    probs = run(torch.tensor([[2.0, 9.0, 9.0, 1.0]]), [1.0], [1], [1.0])[0]
    assert probs.sum() == 1 and probs.max() == 1 and probs.argmax().item() in (1, 2)


# -- top-p ------------------------------------------------------------------------------


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.62, 0.9, 0.999])
def test_top_p_keeps_the_smallest_most_likely_set_reaching_p(top_p):
    assert_matches_reference(distinct_logits(3, 40, seed=3), [0.5, 1.0, 2.0], [0] * 3, [top_p] * 3)


def test_top_p_keeps_at_least_the_most_likely_token():
    logits = distinct_logits(2, 30)
    probs = run(logits, [1.0, 1.0], [0, 0], [1e-9, 1e-9])
    assert torch.equal(probs, torch.nn.functional.one_hot(logits.argmax(-1), 30).float())


def test_top_p_one_keeps_every_token_even_when_the_cumulative_sum_rounds_past_one():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 32_000, generator=gen) * 3
    probs = run(logits, [1.0] * 4, [0] * 4, [1.0] * 4)
    assert bool((probs > 0).all())
    torch.testing.assert_close(probs, logits.softmax(-1))


def test_top_p_boundary_with_tied_probabilities():
    # Four equal tokens: masses before them are 0, 1/4, 1/2, 3/4 exactly; p = 1/2 is reached by two.
    probs = run(torch.zeros(1, 4), [1.0], [0], [0.5])[0]
    assert sorted(probs.tolist()) == [0.0, 0.0, 0.5, 0.5]
    probs = run(torch.zeros(1, 4), [1.0], [0], [0.51])[0]
    assert sorted(probs.tolist()) == pytest.approx([0.0, 1 / 3, 1 / 3, 1 / 3])


def test_top_p_applies_to_the_distribution_top_k_left():
    # Probabilities 0.4, 0.3, 0.2, 0.1. With k = 2 they become 4/7, 3/7: p = 0.5 keeps only the
    # first. Applied to the unfiltered distribution, p = 0.5 would have kept two tokens.
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    probs = run(logits, [1.0], [2], [0.5])[0]
    assert probs.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert (run(logits, [1.0], [0], [0.5])[0] > 0).sum() == 2


# -- masked tokens, dtypes, batches -----------------------------------------------------


def test_minus_infinity_tokens_stay_impossible_whatever_k_and_p_allow():
    logits = torch.tensor([[1.0, -math.inf, 0.5, -math.inf, -0.3]] * 3)
    probs = run(logits, [1.0, 0.5, 2.0], [0, 4, 5], [1.0, 1.0, 0.99])
    assert bool((probs[:, [1, 3]] == 0).all())
    torch.testing.assert_close(probs.sum(-1), torch.ones(3))
    assert_matches_reference(logits, [1.0, 0.5, 2.0], [0, 4, 5], [1.0, 1.0, 0.99])


def test_a_row_with_one_finite_token_puts_all_mass_on_it():
    logits = torch.full((1, 6), -math.inf)
    logits[0, 4] = -20.0
    assert run(logits, [0.7], [3], [0.2])[0].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_give_fp32_probabilities(dtype):
    logits = distinct_logits(2, 16).to(dtype)
    probs = run(logits, [1.0, 0.5], [0, 3], [1.0, 0.9])
    assert probs.dtype == torch.float32
    assert_matches_reference(logits.float(), [1.0, 0.5], [0, 3], [1.0, 0.9])


def test_each_row_uses_its_own_parameters_in_one_batch():
    logits = distinct_logits(5, 64, seed=11)
    temperature, top_k, top_p = [0.3, 1.0, 1.7, 1.0, 0.9], [0, 1, 10, 0, 5], [1.0, 1.0, 0.8, 0.35, 0.6]
    assert_matches_reference(logits, temperature, top_k, top_p)
    batched = run(logits, temperature, top_k, top_p)
    for i in range(5):  # and a row filtered alone gives the same as in the batch
        alone = run(logits[i : i + 1], temperature[i : i + 1], top_k[i : i + 1], top_p[i : i + 1])
        torch.testing.assert_close(batched[i : i + 1], alone)
