"""Greedy SD and SSD are token-identical to the target alone (transformers as the reference).

The matrix covers every value of each knob at least once, and many pairs: modes (sd, ssd),
pairs (copy of the target: full acceptance, bonus tokens, cache hits; perturbed copy: partial
acceptance; random draft: almost nothing accepted), batch 1/4/8, K 1/3/6, F 1/2/3, backups
(jit, fast, adaptive), prefix caching on/off, forced preemption, and transports (in-process,
gRPC on loopback, torch.distributed fast path).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from saguaro import SamplingParams
from saguaro.config import EngineConfig, ModelConfig
from saguaro.services.draft.server import serve
from saguaro.speculative.settings import DraftSettings
from saguaro.services.target.local import speculative_engine
from saguaro.llm import LLM
from saguaro.v1 import speculation_pb2 as pb
from saguaro.net import free_port
from tests_support import cycle_depths, flapping_governor, hf_greedy, make_prompts

NEW_TOKENS = 16
BACKUPS = {"jit": pb.BACKUP_POLICY_JIT, "fast": pb.BACKUP_POLICY_FAST, "adaptive": pb.BACKUP_POLICY_ADAPTIVE}


@dataclass(frozen=True)
class Case:
    mode: str
    target: str
    draft: str
    batch: int
    k: int
    f: int
    backup: str = "jit"
    prefix_caching: bool = True
    preempt: bool = False
    transport: str = "inprocess"
    geometric: bool = False
    governed: bool = False  # a governor that switches speculation off and on every few rounds
    workers: int = 1  # draft workers sharing the batch (data parallelism)
    depths: tuple[int, ...] = ()  # SSD rounds propose these depths in turn (empty: K, or the depth model's)


CASES = [
    Case("ssd", "llama", "llama_draft_copy", 1, 3, 2),
    Case("ssd", "llama", "llama_draft_perturbed", 4, 3, 3),
    Case("ssd", "llama", "llama_draft_perturbed", 8, 6, 1, "fast", prefix_caching=False),
    Case("ssd", "llama", "llama_draft_perturbed", 8, 3, 2, "adaptive", preempt=True),
    Case("ssd", "qwen3", "qwen3_draft_perturbed", 1, 1, 3, "fast"),
    Case("ssd", "qwen3", "qwen3_draft_perturbed", 4, 6, 3, transport="grpc"),
    Case("ssd", "llama", "llama_draft_copy", 4, 6, 1, prefix_caching=False, transport="grpc"),
    Case("ssd", "llama", "llama_draft_random", 4, 3, 3, "fast", transport="grpc"),
    Case("ssd", "llama", "llama_draft_copy", 8, 1, 3, "fast", preempt=True, transport="grpc"),
    Case("ssd", "llama", "llama_draft_perturbed", 4, 3, 2, transport="torch.distributed"),
    Case("ssd", "qwen3", "qwen3_draft_perturbed", 8, 6, 1, "adaptive", preempt=True, transport="torch.distributed"),
    Case("ssd", "llama", "llama_draft_perturbed", 4, 3, 2, "adaptive", geometric=True),
    Case("ssd", "qwen3", "qwen3_draft_perturbed", 1, 6, 2, geometric=True, transport="grpc"),
    Case("sd", "llama", "llama_draft_perturbed", 4, 1, 1),
    Case("sd", "llama", "llama_draft_copy", 8, 6, 1, prefix_caching=False),
    Case("sd", "qwen3", "qwen3_draft_perturbed", 8, 3, 1, preempt=True),
    Case("ssd", "llama", "llama_draft_perturbed", 4, 3, 2, "adaptive", governed=True),
    Case("ssd", "qwen3", "qwen3_draft_perturbed", 1, 3, 2, transport="grpc", governed=True),
    Case("sd", "llama", "llama_draft_copy", 4, 3, 1, preempt=True, governed=True),
    Case("ssd", "llama", "llama_draft_perturbed", 4, 3, 2, "adaptive", workers=2),
    Case("ssd", "qwen3", "qwen3_draft_perturbed", 8, 3, 2, preempt=True, transport="grpc", workers=2),
    Case("ssd", "llama", "llama_draft_copy", 4, 3, 2, transport="torch.distributed", workers=3),
    Case("sd", "llama", "llama_draft_perturbed", 4, 3, 1, governed=True, workers=2),
    Case("ssd", "llama", "llama_draft_perturbed", 1, 1, 3, "fast", transport="unix"),
    Case("ssd", "qwen3", "qwen3_draft_perturbed", 4, 3, 1, transport="unix"),
    Case("ssd", "llama", "llama_draft_perturbed", 8, 6, 3, preempt=True, transport="unix"),
    Case("ssd", "qwen3", "qwen3_draft_perturbed", 8, 6, 1, "fast", preempt=True, transport="unix"),
    Case("ssd", "llama", "llama_draft_copy", 4, 3, 2, "adaptive", transport="unix", workers=2),
    Case("ssd", "llama", "llama_draft_perturbed", 4, 3, 2, depths=(3, 1, 2, 2)),
    Case("ssd", "qwen3", "qwen3_draft_perturbed", 8, 6, 1, "fast", preempt=True, transport="unix", depths=(6, 2, 4, 1)),
    Case("ssd", "llama", "llama_draft_copy", 1, 3, 3, transport="grpc", depths=(1, 3, 2)),
    Case("ssd", "llama", "llama_draft_perturbed", 8, 3, 2, "adaptive", preempt=True, governed=True, depths=(2, 3)),
]


@pytest.fixture(scope="module")
def prompts():
    return make_prompts(8, 380, seed=21, min_len=4, max_len=30)


@pytest.fixture(scope="module")
def expected(model_dirs, prompts):
    return {name: [hf_greedy(model_dirs[name], p, NEW_TOKENS) for p in prompts] for name in ("llama", "qwen3")}


def engine_config(model: str, case: Case, draft: bool = False) -> EngineConfig:
    # a target cache of 14 blocks (~2 sequences) forces preemption with 8 running sequences
    cfg = ModelConfig.from_dir(model)
    per_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
    kv = per_token * 8 * 14 if case.preempt and not draft else 1 << 24
    return EngineConfig(model=model, block_size=8, kv_cache_bytes=kv, max_model_len=64 if case.preempt else 256,
                        max_num_seqs=case.batch, enable_prefix_caching=case.prefix_caching, show_progress=False)


def build(model_dirs, case: Case):
    policy = pb.FAN_OUT_POLICY_GEOMETRIC if case.geometric else pb.FAN_OUT_POLICY_LIST
    settings = DraftSettings(k=case.k, fan_out=case.f, backup_policy=BACKUPS[case.backup], jit_max_batch_size=4,
                             fan_out_policy=policy)
    target = engine_config(model_dirs[case.target], case)
    draft = engine_config(model_dirs[case.draft], case, draft=True)
    servers = []
    addresses = None
    if case.transport != "inprocess":
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(case.workers)]
        servers = [serve(draft, address, settings) for address in addresses]
    engine = speculative_engine(target, case.mode, draft, settings, draft_address=addresses,
                                fast_path=None if case.transport == "grpc" else case.transport, draft_workers=case.workers,
                                governor=flapping_governor() if case.governed else None,
                                draft_soft_deadline=False)  # every round waits for its reply: no timing luck
    if case.depths:
        cycle_depths(engine, case.depths)
    return engine, servers


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in vars(c).values()))
def test_greedy_tokens_identical_to_target(model_dirs, prompts, expected, case):
    engine, servers = build(model_dirs, case)
    try:
        outputs = LLM.from_engine(engine, None).generate(prompts, SamplingParams(max_tokens=NEW_TOKENS))
        assert [o.token_ids for o in outputs] == expected[case.target]
        stats = [o.stats for o in outputs]
        assert all(s["mode"] == case.mode and s["fallback_rounds"] == 0 for s in stats)
        assert all(s["transport"] == case.transport for s in stats)
        if case.preempt:
            assert engine.scheduler.num_preemptions > 0
        if case.governed:
            assert sum(s["policy_rounds"] for s in stats) > 0 and sum(s["spec_rounds"] for s in stats) > 0
        if case.draft.endswith("copy") and not case.preempt and not case.depths:
            rounds = sum(s["spec_rounds"] for s in stats)
            accepted = sum(sum(s["accepted_per_position"]) for s in stats)
            assert accepted >= 0.9 * rounds * case.k  # full acceptance except where the output ends
            if case.mode == "ssd":
                assert sum(s["cache_hits"] for s in stats) >= 0.5 * rounds
        if case.depths and not case.governed:  # entries answered rounds of their own and of another depth
            assert sum(s["cache_hits"] for s in stats) > 0
        if case.workers > 1:  # every worker speculated for its share of the batch
            assert all(rows > 0 for rows in engine.proposer.channel.rows_speculated)
    finally:
        engine.proposer.close()
        for server in servers:
            server.stop(None)


def test_copy_draft_hit_rate_near_100_percent(model_dirs):
    """With a draft equal to the target every outcome is (n = K, argmax): always forked."""
    case = Case("ssd", "llama", "llama_draft_copy", 1, 3, 1)
    engine, _ = build(model_dirs, case)
    try:
        out = LLM.from_engine(engine, None).generate([[5, 6, 7]], SamplingParams(max_tokens=80, ignore_eos=True))[0]
        assert out.stats["cache_hit_rate"] >= 0.9  # only the first round (sentinel) misses
        assert out.stats["tokens_per_round"] >= 3.5
    finally:
        engine.proposer.close()
