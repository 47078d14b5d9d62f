"""The draft worker on its own: speculation-cache semantics and tree correctness.

Requests are real protobuf messages, handled exactly as the gRPC service handles them.
"""

from __future__ import annotations

import pytest
import torch

from saguaro.config import EngineConfig
from saguaro.speculative.settings import DraftSettings
from saguaro.services.draft.worker import DraftWorker, draft_runner
from saguaro.speculative import proposal_codec
from saguaro.v1 import speculation_pb2 as pb

K = 3


def make_worker(model_dir: str, build_cache: bool = True, **settings) -> DraftWorker:
    s = DraftSettings(k=K, fan_out=settings.pop("fan_out", 2), **settings)
    runner = draft_runner(EngineConfig(model=model_dir, block_size=8, kv_cache_bytes=1 << 24, show_progress=False), s)
    return DraftWorker(runner, s, build_cache=build_cache)


def prefill(worker: DraftWorker, seq_id: int, tokens: list[int], seed: int = 0) -> pb.PrefillReply:
    req = pb.SpeculationRequest(prefill=pb.PrefillRequest(sequences=[
        pb.PrefillSequence(seq_id=seq_id, prompt_token_ids=tokens, reset=True, seed=seed)]))
    return worker.handle(req).prefill


def speculate(worker: DraftWorker, rows: list[dict]) -> pb.SpeculateReply:
    req = pb.SpeculationRequest(speculate=pb.SpeculateRequest(rows=[pb.SpeculateRow(**r) for r in rows]))
    reply = worker.handle(req)
    assert reply.WhichOneof("kind") == "speculate", reply
    return reply.speculate


def row(seq_id, n_prev, r, committed_len, committed_tokens=(), temperature=0.0):
    return dict(seq_id=seq_id, n_prev=n_prev, recovery_token=r, committed_len=committed_len,
                committed_tokens=list(committed_tokens), draft_temperature=temperature, target_temperature=temperature)


PROMPT = [5, 17, 42, 99, 7, 23, 61]


def test_sentinel_misses_and_jit_fills(model_dirs):
    worker = make_worker(model_dirs["llama_draft_perturbed"])
    prefill(worker, 1, PROMPT)
    reply = speculate(worker, [row(1, -1, 11, len(PROMPT))])
    (r,) = reply.rows
    assert r.status == pb.ROW_STATUS_OK and not r.hit
    assert r.backup == pb.BACKUP_KIND_JIT and r.proposal_is_sample and len(r.tokens) == K
    assert r.probs == b""  # greedy rows carry no probabilities


def jit_tokens(model_dir: str, context: list[int], recovery: int, temperature: float = 0.0, seed: int = 0):
    """What a fresh worker drafts just in time for this context (the reference for branches)."""
    fresh = make_worker(model_dir, build_cache=False)
    prefill(fresh, 9, context, seed=seed)
    out = speculate(fresh, [row(9, -1, recovery, len(context), temperature=temperature)]).rows[0]
    return list(out.tokens)


def test_every_cached_branch_equals_a_fresh_jit_draft(model_dirs):
    """Tree decode with logical positions and masks must draft exactly what plain decoding
    would under the branch's context: every (j, t) entry is checked against a fresh JIT."""
    model = model_dirs["llama_draft_perturbed"]
    worker = make_worker(model, fan_out=2)
    prefill(worker, 1, PROMPT)
    proposal = list(speculate(worker, [row(1, -1, 11, len(PROMPT))]).rows[0].tokens)
    worker.build()
    entries = worker.cache._by_seq[1]
    assert len(entries) == worker.settings.budget == 2 * (K + 1)
    for (j, t), cached in entries.items():
        if j < K:
            assert t != proposal[j], "the proposed token must be excluded from forks at depth j < K"
        context = PROMPT + [11] + proposal[:j]
        assert cached.tokens.tolist() == jit_tokens(model, context, t), f"branch (j={j}, t={t}) differs"


def test_covered_outcome_hits_then_uncovered_and_stale_miss(model_dirs):
    worker = make_worker(model_dirs["llama_draft_perturbed"])
    prefill(worker, 1, PROMPT)
    proposal = list(speculate(worker, [row(1, -1, 11, len(PROMPT))]).rows[0].tokens)
    worker.build()
    (j, t), entry = next(iter(worker.cache._by_seq[1].items()))
    committed = [11] + proposal[:j]
    reply = speculate(worker, [row(1, j, t, len(PROMPT) + len(committed), committed)]).rows[0]
    assert reply.hit and reply.backup == pb.BACKUP_KIND_NONE and list(reply.tokens) == entry.tokens.tolist()
    worker.build()
    # an outcome the tree did not cover: the recovery token of a non-forked value
    forks = {tok for (_, tok) in worker.cache._by_seq[1]}
    uncovered = next(tok for tok in range(3, 500) if tok not in forks)
    c = len(PROMPT) + len(committed)
    reply = speculate(worker, [row(1, 0, uncovered, c + 1, [t])]).rows[0]
    assert not reply.hit and reply.backup == pb.BACKUP_KIND_JIT
    # the previous round's entries are gone: asking for the consumed key again misses
    worker.build()
    worker.cache._by_seq.pop(1)
    reply = speculate(worker, [row(1, j, t, c + 2, [uncovered])]).rows[0]
    assert not reply.hit


def test_a_synchronous_round_drafts_just_in_time_and_builds_nothing(model_dirs):
    """The governor's SD arm on an SSD draft: a key the cache covers is not looked up (the row
    is a JIT draft, even under the fast backup policy), the rows' entries are dropped, and the
    build after the reply does nothing; the JIT tokens are what a fresh SD worker drafts."""
    worker = make_worker(model_dirs["llama_draft_perturbed"], backup_policy=pb.BACKUP_POLICY_FAST)
    prefill(worker, 1, PROMPT)
    proposal = list(speculate(worker, [row(1, -1, 11, len(PROMPT))]).rows[0].tokens)
    worker.build()
    (j, t), _ = next(iter(worker.cache._by_seq[1].items()))
    committed = [11] + proposal[:j]
    request = pb.SpeculateRequest(rows=[pb.SpeculateRow(**row(1, j, t, len(PROMPT) + len(committed), committed))],
                                  synchronous=True)
    reply = worker.handle(pb.SpeculationRequest(speculate=request)).speculate.rows[0]
    assert not reply.hit and reply.backup == pb.BACKUP_KIND_JIT and reply.proposal_is_sample
    assert len(worker.cache) == 0 and worker.pending == []
    worker.build()
    assert len(worker.cache) == 0
    assert list(reply.tokens) == jit_tokens(model_dirs["llama_draft_perturbed"], PROMPT + committed, t)


def test_a_synchronous_round_may_draft_fewer_tokens_than_k(model_dirs):
    """``lookahead`` k < K: the first k tokens of the K-token JIT draft (greedy), and nothing
    else; a lookahead above K is refused, in a synchronous round or not, and the worker keeps
    serving."""
    model = model_dirs["llama_draft_perturbed"]
    worker = make_worker(model)
    prefill(worker, 1, PROMPT)
    request = pb.SpeculateRequest(rows=[pb.SpeculateRow(**row(1, -1, 11, len(PROMPT)))], synchronous=True, lookahead=2)
    reply = worker.handle(pb.SpeculationRequest(speculate=request)).speculate.rows[0]
    assert list(reply.tokens) == jit_tokens(model, PROMPT, 11)[:2] and reply.backup == pb.BACKUP_KIND_JIT
    for synchronous in (False, True):
        request = pb.SpeculateRequest(rows=[pb.SpeculateRow(**row(1, -1, 12, len(PROMPT) + 1, [11]))],
                                      synchronous=synchronous, lookahead=K + 1)
        answer = worker.handle(pb.SpeculationRequest(speculate=request))
        assert answer.WhichOneof("kind") == "error" and "lookahead" in answer.error.message
    assert speculate(worker, [row(1, -1, 12, len(PROMPT) + 1, [11])]).rows[0].status == pb.ROW_STATUS_OK


def speculate_at(worker: DraftWorker, rows: list[dict], depth: int) -> pb.SpeculateReply:
    request = pb.SpeculateRequest(rows=[pb.SpeculateRow(**r) for r in rows], lookahead=depth)
    reply = worker.handle(pb.SpeculationRequest(speculate=request))
    assert reply.WhichOneof("kind") == "speculate", reply
    return reply.speculate


def test_a_shallower_ssd_round_builds_a_tree_as_deep_as_its_proposal(model_dirs):
    """An SSD round of depth 2 < K: the proposal is 2 tokens, the glue covers [r, s_1, s_2],
    the tree is 2 steps deep with the budget M (the branches of depths 2..K folded into depth
    2), and every branch is what a fresh JIT draft gives under its context."""
    model = model_dirs["llama_draft_perturbed"]
    worker = make_worker(model, fan_out=2)
    prefill(worker, 1, PROMPT)
    proposal = list(speculate_at(worker, [row(1, -1, 11, len(PROMPT))], depth=2).rows[0].tokens)
    assert proposal == jit_tokens(model, PROMPT, 11)[:2]
    worker.build()
    entries = worker.cache._by_seq[1]
    depths = [j for j, _ in entries]
    assert len(entries) == worker.settings.budget and max(depths) == 2
    assert [depths.count(j) for j in range(3)] == [2, 2, 2 * (K - 1)]
    for (j, t), cached in entries.items():
        assert len(cached.tokens) == 2
        assert cached.tokens.tolist() == jit_tokens(model, PROMPT + [11] + proposal[:j], t)[:2], (j, t)


def test_a_build_that_would_outlast_the_targets_time_narrows_its_tree_and_its_branches_stay_exact(model_dirs):
    """The target gives the build a time (build_budget_us). Once the worker has measured a full
    build that overran it, it narrows the tree; every branch it keeps is still a fresh JIT draft,
    and a covered outcome still hits."""
    model = model_dirs["llama_draft_perturbed"]
    worker = make_worker(model, fan_out=3)
    prefill(worker, 1, PROMPT)
    proposal = list(speculate(worker, [row(1, -1, 11, len(PROMPT))]).rows[0].tokens)
    worker.build()  # no time given: the full budget, and the worker's first measurement
    assert len(worker.cache._by_seq[1]) == worker.settings.budget == 12
    n, r = 0, next(t for (j, t) in worker.cache._by_seq[1] if j == 0)  # an outcome the cache covers
    request = pb.SpeculateRequest(rows=[pb.SpeculateRow(**row(1, n, r, len(PROMPT) + 1, [11]))], build_budget_us=1)
    reply = worker.handle(pb.SpeculationRequest(speculate=request)).speculate
    assert reply.rows[0].hit
    proposal = list(reply.rows[0].tokens)
    worker.build()  # 1 µs: the full tree overran, so this build tries half the width
    entries = worker.cache._by_seq[1]
    assert len(entries) == 6
    for (j, t), cached in entries.items():
        assert cached.tokens.tolist() == jit_tokens(model, PROMPT + [11, r] + proposal[:j], t), (j, t)
    # the next reply reports the narrowed build
    nxt = speculate(worker, [row(1, -1, 3, len(PROMPT) + 2 + K, [r, *proposal])])
    assert nxt.timings.prev_build_branches == 6


def test_an_entry_answers_a_shallower_round_with_its_prefix_but_not_a_deeper_one(model_dirs):
    """A depth-K entry answers a depth-2 lookup with its first two tokens (and, for a sampled
    row, the first two proposal laws): a prefix of a chain drawn token by token from q. A
    depth-2 entry cannot answer a depth-K round: it misses and is backed up."""
    worker = make_worker(model_dirs["llama_draft_perturbed"])
    prefill(worker, 1, PROMPT, seed=3)
    proposal = list(speculate(worker, [row(1, -1, 11, len(PROMPT), temperature=0.8)]).rows[0].tokens)
    worker.build()
    (j, t), entry = next(iter(worker.cache._by_seq[1].items()))
    committed = [11] + proposal[:j]
    c = len(PROMPT) + len(committed)
    reply = speculate_at(worker, [row(1, j, t, c, committed, temperature=0.8)], depth=2)
    (hit,) = reply.rows
    assert hit.hit and list(hit.tokens) == entry.tokens[:2].tolist()
    probs = proposal_codec.decode(hit.probs, reply.probs_dtype, 2, worker.runner.vocab_size)
    assert torch.equal(probs, proposal_codec.decode(proposal_codec.encode(entry.probs[:2], reply.probs_dtype),
                                                    reply.probs_dtype, 2, worker.runner.vocab_size))
    worker.build()  # a depth-2 tree
    (j2, t2), _ = next(iter(worker.cache._by_seq[1].items()))
    committed2 = [t] + list(hit.tokens)[:j2]
    deeper = speculate(worker, [row(1, j2, t2, c + len(committed2), committed2, temperature=0.8)]).rows[0]
    assert not deeper.hit and deeper.backup == pb.BACKUP_KIND_JIT and len(deeper.tokens) == K


def test_reset_prefill_forces_a_miss(model_dirs):
    worker = make_worker(model_dirs["llama_draft_copy"])
    prefill(worker, 1, PROMPT)
    speculate(worker, [row(1, -1, 11, len(PROMPT))])
    worker.build()
    assert len(worker.cache) > 0
    prefill(worker, 1, PROMPT + [11])  # e.g. the target preempted and re-prefilled the sequence
    assert len(worker.cache) == 0
    assert not speculate(worker, [row(1, -1, 12, len(PROMPT) + 1)]).rows[0].hit


def test_sampled_rows_ship_the_law_they_were_drawn_from(model_dirs):
    worker = make_worker(model_dirs["llama_draft_perturbed"], downweight=0.5)
    prefill(worker, 1, PROMPT, seed=3)
    reply = speculate(worker, [row(1, -1, 11, len(PROMPT), temperature=0.8)])
    r = reply.rows[0]

    q = proposal_codec.decode(r.probs, reply.probs_dtype, K, worker.runner.vocab_size)
    assert torch.allclose(q.sum(-1), torch.ones(K), atol=1e-5)
    assert all(q[i, tok] > 0 for i, tok in enumerate(r.tokens))


def test_fast_backup_sends_placeholders_not_samples(model_dirs):
    worker = make_worker(model_dirs["llama_draft_perturbed"], backup_policy=pb.BACKUP_POLICY_FAST)
    prefill(worker, 1, PROMPT)
    r = speculate(worker, [row(1, -1, 11, len(PROMPT), temperature=0.7)]).rows[0]
    assert r.backup == pb.BACKUP_KIND_FAST and not r.proposal_is_sample and r.probs == b"" and len(r.tokens) == K


def test_a_placeholder_row_spends_its_whole_tree_at_depth_zero(model_dirs):
    """The target keeps no placeholder token, so the row returns with n = 0: every branch forks
    there, and a hit row of the same round keeps the hit fan-out."""
    worker = make_worker(model_dirs["llama_draft_perturbed"], backup_policy=pb.BACKUP_POLICY_FAST, fan_out=2)
    prefill(worker, 1, PROMPT)
    prefill(worker, 2, PROMPT)
    speculate(worker, [row(1, -1, 11, len(PROMPT)), row(2, -1, 11, len(PROMPT))])
    worker.build()
    budget = worker.settings.budget
    for seq in (1, 2):
        assert [j for (j, _) in worker.cache._by_seq[seq]] == [0] * budget
    r = speculate(worker, [row(1, 0, next(iter(worker.cache._by_seq[1]))[1], len(PROMPT) + 1, [11])]).rows[0]
    assert r.hit and not r.backup  # an n = 0 outcome the depth-0 fan-out covered
    speculate(worker, [row(2, -1, 11, len(PROMPT))])  # row 2 misses again (placeholder)
    worker.build()
    assert [j for (j, _) in worker.cache._by_seq[2]] == [0] * budget


def test_placeholder_fan_out_keeps_the_budget_within_the_vocabulary():
    from saguaro.speculative.fanout import placeholder_fan_out

    assert placeholder_fan_out(3, 8, 500) == [8, 0, 0, 0]
    assert placeholder_fan_out(2, 8, 5) == [4, 0, 4]  # depth 0 holds V - 1 (s_1 excluded), the rest at K
    assert placeholder_fan_out(2, 20, 5) is None
    assert placeholder_fan_out(0, 3, 500) is None


def test_bad_rows_and_requests_get_clear_answers_and_the_worker_keeps_serving(model_dirs):
    worker = make_worker(model_dirs["llama_draft_perturbed"])
    prefill(worker, 1, PROMPT)
    rows = speculate(worker, [row(2, -1, 11, 5), row(1, -1, 11, len(PROMPT) + 3, [1, 2])]).rows
    assert [r.status for r in rows] == [pb.ROW_STATUS_UNKNOWN_SEQUENCE, pb.ROW_STATUS_DESYNC]
    empty = worker.handle(pb.SpeculationRequest(round_id=7))
    assert empty.round_id == 7 and empty.error.code == pb.ERROR_CODE_INVALID_REQUEST
    bad_prompt = worker.handle(pb.SpeculationRequest(prefill=pb.PrefillRequest(sequences=[
        pb.PrefillSequence(seq_id=3, prompt_token_ids=[5, 10_000])])))
    assert "outside [0, 500)" in bad_prompt.error.message
    prefill(worker, 1, PROMPT)
    assert speculate(worker, [row(1, -1, 11, len(PROMPT))]).rows[0].status == pb.ROW_STATUS_OK


@pytest.mark.parametrize("fan_out_list", [[3, 1, 1, 1], [1, 1, 1, 3]])
def test_explicit_fan_out_lists_shape_the_tree(model_dirs, fan_out_list):
    worker = make_worker(model_dirs["llama_draft_perturbed"], fan_out_hit=fan_out_list)
    prefill(worker, 1, PROMPT)
    speculate(worker, [row(1, -1, 11, len(PROMPT))])
    worker.build()
    depths = [j for (j, _) in worker.cache._by_seq[1]]
    assert [depths.count(j) for j in range(K + 1)] == fan_out_list


def test_geometric_policy_reallocates_branches_from_reported_outcomes(model_dirs):
    worker = make_worker(model_dirs["llama_draft_copy"], fan_out=2, fan_out_policy=pb.FAN_OUT_POLICY_GEOMETRIC)
    prefill(worker, 1, PROMPT)
    committed = len(PROMPT)
    proposal = list(speculate(worker, [row(1, -1, 11, committed)]).rows[0].tokens)
    worker.build()
    recovery = 11
    for _ in range(6):  # the target accepts everything each round: n = K
        new = [recovery] + proposal
        committed += len(new)
        recovery = 12
        proposal = list(speculate(worker, [row(1, K, recovery, committed, new)]).rows[0].tokens)
        worker.build()
    assert sum(worker.fan_out_hit) == worker.settings.budget
    assert worker.fan_out_hit[K] == max(worker.fan_out_hit) and worker.fan_out_hit != [2] * (K + 1)
    depths = [j for (j, _) in worker.cache._by_seq[1]]
    assert [depths.count(j) for j in range(K + 1)] == worker.fan_out_hit


def test_fast_path_only_within_one_pod():
    """Same node (boot id) but another pod (namespaces differ): loopback is not shared -> gRPC."""
    from saguaro.speculative.handshake import choose_transport

    ours = pb.HostIdentity(boot_id="b1", ipc_namespace="ipc:[1]")
    offer = [pb.TRANSPORT_TORCH_DISTRIBUTED, pb.TRANSPORT_GRPC]
    same_pod = pb.HandshakeRequest(host=pb.HostIdentity(boot_id="b1", ipc_namespace="ipc:[1]"), transports_offered=offer)
    other_pod = pb.HandshakeRequest(host=pb.HostIdentity(boot_id="b1", ipc_namespace="ipc:[2]"), transports_offered=offer)
    grpc_only = pb.HandshakeRequest(host=same_pod.host, transports_offered=[pb.TRANSPORT_GRPC])
    assert choose_transport(same_pod, ours) == pb.TRANSPORT_TORCH_DISTRIBUTED
    assert choose_transport(other_pod, ours) == pb.TRANSPORT_GRPC
    assert choose_transport(grpc_only, ours) == pb.TRANSPORT_GRPC
