"""Sampled SD/SSD output follows the target's distribution: seeded chi-square tests.

A tiny-vocabulary target (V = 10) makes the exact law of the first generated tokens
enumerable with transformers. Every request has its own seed, so the test is deterministic.
Token 1 comes from the target's prefill; tokens 2 and 3 come from speculative rounds — with
K = 1 the third token is drafted from the speculation cache whenever round 1 was a covered
outcome, so hits, misses, rejections, residual draws and bonus tokens are all exercised.
The verification math itself is proven by exact enumeration in test_verification.py; this
test checks the plumbing around it (the shipped q is the sampled q, RNG roles are separate,
cached branches are drawn under the right context).
"""

from __future__ import annotations

import pytest
import torch

from saguaro import LLM, SamplingParams
from saguaro.config import EngineConfig
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.local import speculative_engine
from saguaro.tiny_models import build_tiny_model, perturbed_copy
from saguaro.v1 import speculation_pb2 as pb
from tests_support import assert_same_law, cycle_depths, flapping_governor, hf_logits

pytestmark = pytest.mark.slow  # chi-square tests over thousands of sampled tokens

VOCAB = 10
PROMPT = [4, 7, 3]
SAMPLES = 3000


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_vocab")
    target = build_tiny_model(root / "target", vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                              init_range=0.6, seed=4, with_tokenizer=False)
    draft = perturbed_copy(target, root / "draft", noise=0.6, seed=5)
    return str(target), str(draft)


def target_law(target: str, top_k: int) -> torch.Tensor:
    """P(t2, t3) under the target at temperature 1 (t1 marginalised), [V, V], keeping only the
    ``top_k`` most likely tokens at each step when top_k > 0."""

    def probs(context: list[int]) -> torch.Tensor:
        logits = hf_logits(target, context)[-1].double()
        if top_k:
            logits[logits < logits.topk(top_k).values[-1]] = float("-inf")
        return logits.softmax(-1)

    p1 = probs(PROMPT)
    law = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    for t1 in range(VOCAB):
        p2 = probs(PROMPT + [t1])
        for t2 in range(VOCAB):
            law[t2] += p1[t1] * p2[t2] * probs(PROMPT + [t1, t2])
    return law


@pytest.fixture(scope="module")
def exact_law(pair):
    return target_law(pair[0], top_k=0)


def sample_pairs(engine, top_k: int = 0, draft_temperature: float | None = None) -> torch.Tensor:
    llm = LLM.from_engine(engine, None)
    params = [SamplingParams(max_tokens=3, temperature=1.0, top_k=top_k, seed=i, ignore_eos=True,
                             draft_temperature=draft_temperature) for i in range(SAMPLES)]
    outputs = llm.generate([PROMPT] * SAMPLES, params)
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    for o in outputs:
        counts[o.token_ids[1], o.token_ids[2]] += 1
    return counts, outputs


CONFIGS = {
    "ar": dict(mode="ar"),
    "sd": dict(mode="sd", settings=DraftSettings(k=1, fan_out=2)),
    "ssd_c1": dict(mode="ssd", settings=DraftSettings(k=1, fan_out=4)),
    "ssd_c05": dict(mode="ssd", settings=DraftSettings(k=1, fan_out=4, downweight=0.5)),
    "ssd_fast_backup": dict(mode="ssd", settings=DraftSettings(k=2, fan_out=2, backup_policy=pb.BACKUP_POLICY_FAST)),
    "ssd_governed": dict(mode="ssd", settings=DraftSettings(k=1, fan_out=4), governed=True),
    "ssd_depths": dict(mode="ssd", settings=DraftSettings(k=2, fan_out=3), depths=(2, 1)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_sampled_output_has_the_target_law(pair, exact_law, name):
    target, draft = pair
    cfg = CONFIGS[name]
    make = lambda model: EngineConfig(model=model, max_num_seqs=64, block_size=8, kv_cache_bytes=1 << 24,  # noqa: E731
                                      show_progress=False)
    governor = flapping_governor() if cfg.get("governed") else None
    engine = speculative_engine(make(target), cfg["mode"], make(draft), cfg.get("settings"), governor=governor)
    if "depths" in cfg:  # rounds of depth 2 and 1 in turn: entries cut to the shallower round
        cycle_depths(engine, cfg["depths"])
    try:
        counts, outputs = sample_pairs(engine)
    finally:
        if engine.proposer is not None:
            engine.proposer.close()
    assert_same_law(counts, exact_law)
    if cfg["mode"] != "ar":
        stats = [o.stats for o in outputs]
        assert sum(s["spec_rounds"] for s in stats) > 0
        if name.startswith("ssd_c") or name == "ssd_depths":
            assert sum(s["cache_hits"] for s in stats) > SAMPLES // 10, "the cache path must be exercised"
            assert sum(sum(s["accepted_per_position"]) for s in stats) > 0
        if name == "ssd_fast_backup":
            assert sum(s["backups_fast"] for s in stats) > 0
        if cfg.get("governed"):
            assert sum(s["policy_rounds"] for s in stats) > 0


def test_top_k_sampling_through_ssd_has_the_filtered_target_law(pair):
    """top-k rows verify against the filtered target distribution (the non-fused path)."""
    target, draft = pair
    make = lambda model: EngineConfig(model=model, max_num_seqs=64, block_size=8, kv_cache_bytes=1 << 24,  # noqa: E731
                                      show_progress=False)
    engine = speculative_engine(make(target), "ssd", make(draft), DraftSettings(k=1, fan_out=4))
    try:
        counts, outputs = sample_pairs(engine, top_k=6)
    finally:
        engine.proposer.close()
    assert_same_law(counts, target_law(target, top_k=6))
    assert sum(o.stats["cache_hits"] for o in outputs) > 0


@pytest.mark.parametrize("mode, draft_temperature", [("sd", 0.5), ("ssd", 2.0)])
def test_a_draft_temperature_changes_the_proposals_not_the_law(pair, exact_law, mode, draft_temperature):
    """The draft proposes from its own law at ``draft_temperature`` and ships that q; the
    target verifies against it, so the output keeps the target's law at temperature 1."""
    target, draft = pair
    make = lambda model: EngineConfig(model=model, max_num_seqs=64, block_size=8, kv_cache_bytes=1 << 24,  # noqa: E731
                                      show_progress=False)
    engine = speculative_engine(make(target), mode, make(draft), DraftSettings(k=1, fan_out=4))
    try:
        counts, outputs = sample_pairs(engine, draft_temperature=draft_temperature)
    finally:
        engine.proposer.close()
    assert_same_law(counts, exact_law)
    assert sum(o.stats["spec_rounds"] for o in outputs) > 0


def test_the_chi_square_check_detects_a_wrong_law(pair, exact_law):
    """Guard against a vacuous test: sampling at the wrong temperature must be rejected."""
    target, _ = pair
    engine = speculative_engine(EngineConfig(model=target, max_num_seqs=64, show_progress=False), "ar")
    llm = LLM.from_engine(engine, None)
    params = [SamplingParams(max_tokens=3, temperature=0.8, seed=i, ignore_eos=True) for i in range(SAMPLES)]
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    for o in llm.generate([PROMPT] * SAMPLES, params):
        counts[o.token_ids[1], o.token_ids[2]] += 1
    with pytest.raises(AssertionError, match="chi-square"):
        assert_same_law(counts, exact_law)


PROCESSORS = dict(presence_penalty=0.8, frequency_penalty=0.6, repetition_penalty=1.5, min_p=0.08, min_tokens=2,
                  stop_token_ids=[5], logit_bias={4: 1.5, 8: -2.0})


def processed_probs(target: str, context: list[int], eos: frozenset[int]) -> torch.Tensor:
    """The next-token law at temperature 1 after vLLM's processors, from their formulas."""
    p = PROCESSORS
    output = context[len(PROMPT):]
    logits = hf_logits(target, context)[-1].double()
    for token, bias in p["logit_bias"].items():
        logits[token] += bias
    if len(output) < p["min_tokens"]:
        logits[sorted(eos | set(p["stop_token_ids"]))] = float("-inf")
    for token in set(context):
        logits[token] = logits[token] / p["repetition_penalty"] if logits[token] > 0 else logits[token] * p["repetition_penalty"]
    for token in set(output):
        logits[token] -= p["frequency_penalty"] * output.count(token) + p["presence_penalty"]
    probs = logits.softmax(-1)
    probs[probs < p["min_p"] * probs.max()] = 0
    return probs / probs.sum()


def processed_law(target: str, eos: frozenset[int]) -> torch.Tensor:
    """P(t2, t3), t1 marginalised, [V, V]."""
    law = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    p1 = processed_probs(target, PROMPT, eos)
    for t1 in range(VOCAB):
        p2 = processed_probs(target, PROMPT + [t1], eos)
        for t2 in range(VOCAB):
            law[t2] += p1[t1] * p2[t2] * processed_probs(target, PROMPT + [t1, t2], eos)
    return law


@pytest.mark.parametrize("mode", ["ar", "sd", "ssd"])
def test_sampled_output_with_logits_processors_has_the_processed_target_law(pair, mode):
    """vLLM's processors (saguaro/logits_processors.py) against their formulas written out here;
    with K = 2 the third token is verified on a row whose penalties count the draft token before
    it (docs/speculation.md, \"Logits processors\")."""
    target, draft = pair
    make = lambda model: EngineConfig(model=model, max_num_seqs=64, block_size=8, kv_cache_bytes=1 << 24,  # noqa: E731
                                      show_progress=False)
    settings = DraftSettings(k=2, fan_out=3) if mode != "ar" else None
    options = {} if mode == "ar" else {"draft_soft_deadline": False}  # every round waits for its proposal
    engine = speculative_engine(make(target), mode, make(draft), settings, **options)
    try:
        params = [SamplingParams(max_tokens=3, temperature=1.0, seed=i, ignore_eos=True, **PROCESSORS)
                  for i in range(SAMPLES)]
        outputs = LLM.from_engine(engine, None).generate([PROMPT] * SAMPLES, params)
    finally:
        if engine.proposer is not None:
            engine.proposer.close()
    counts = torch.zeros(VOCAB, VOCAB, dtype=torch.float64)
    for o in outputs:
        counts[o.token_ids[1], o.token_ids[2]] += 1
    law = processed_law(target, engine.requests.eos_ids)
    assert_same_law(counts, law)
    if mode != "ar":
        stats = [o.stats for o in outputs]
        assert sum(sum(s["accepted_per_position"]) for s in stats) > 0  # rows after a draft token were verified
        assert all(s["fallback_rounds"] == 0 for s in stats)  # (a failing draft would leave plain decoding)
        if mode == "ssd":  # and the speculation cache was built under the processors
            assert sum(s["cache_hits"] for s in stats) > 0
