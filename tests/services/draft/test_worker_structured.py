"""The draft worker masks its proposals with the request's grammar (docs/speculation.md,
"Structured output"): JIT drafts and every cached tree branch stay inside it, and each branch
equals a fresh JIT draft under its own context, so the tree counts its branch's tokens as the
grammar's ``extra`` exactly as JIT steps do."""

from __future__ import annotations

import llguidance
import llguidance.hf
from transformers import AutoTokenizer

from saguaro.config import EngineConfig
from saguaro.services.draft.worker import DraftWorker, draft_runner
from saguaro.speculative.settings import DraftSettings
from saguaro.structured_output import StructuredOutput, llguidance_grammar, to_proto
from saguaro.v1 import speculation_pb2 as pb

K = 3
PROMPT = [5, 17, 42, 99, 7, 23, 61]
SPEC = StructuredOutput.regex(r"[a-z]{2,5}( [a-z]{1,3})?")


def make_worker(model_dir: str, build_cache: bool = True) -> DraftWorker:
    settings = DraftSettings(k=K, fan_out=2)
    runner = draft_runner(EngineConfig(model=model_dir, block_size=8, kv_cache_bytes=1 << 24, show_progress=False),
                          settings)
    return DraftWorker(runner, settings, build_cache=build_cache)


def draft(worker: DraftWorker, context: list[int], recovery: int) -> list[int]:
    """Prefill ``context`` (the prompt and the output so far) with the grammar, then the JIT
    proposal after ``recovery``."""
    item = pb.PrefillSequence(seq_id=1, prompt_token_ids=context, reset=True, seed=0,
                              structured_output=to_proto(SPEC), prompt_len=len(PROMPT))
    assert worker.handle(pb.SpeculationRequest(prefill=pb.PrefillRequest(sequences=[item]))).WhichOneof("kind") \
        == "prefill"
    row = pb.SpeculateRow(seq_id=1, n_prev=-1, recovery_token=recovery, committed_len=len(context))
    reply = worker.handle(pb.SpeculationRequest(speculate=pb.SpeculateRequest(rows=[row])))
    return list(reply.speculate.rows[0].tokens)


def matcher(model_dir: str) -> llguidance.LLMatcher:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer, n_vocab=500, eos_token=1),
                                llguidance_grammar(SPEC), log_level=0)


def test_jit_drafts_and_every_reachable_branch_stay_inside_the_grammar(model_dirs):
    model = model_dirs["llama_draft_perturbed"]
    reference = matcher(model)
    recovery = AutoTokenizer.from_pretrained(model).encode("d", add_special_tokens=False)[0]
    worker = make_worker(model)
    proposal = draft(worker, PROMPT, recovery)
    assert reference.consume_token(recovery) and reference.validate_tokens(proposal) == K
    worker.build()
    reachable = 0
    for (j, fork), cached in worker.cache._by_seq[1].items():
        output = [recovery, *proposal[:j]]
        reference.reset()
        reference.consume_tokens(output)
        if reference.validate_tokens([fork]) == 0:
            continue  # a fork the glue row's mask rules out: the target can never ask for it
        reachable += 1
        tokens = cached.tokens.tolist()
        assert reference.validate_tokens([fork, *tokens]) == K + 1 or 1 in tokens, (j, fork, tokens)
        fresh = make_worker(model, build_cache=False)
        assert tokens == draft(fresh, PROMPT + output, fork), f"branch (j={j}, fork={fork}) differs from JIT"
    assert reachable > K


def test_a_prompt_len_past_the_tokens_is_refused(model_dirs):
    worker = make_worker(model_dirs["llama_draft_perturbed"])
    item = pb.PrefillSequence(seq_id=1, prompt_token_ids=PROMPT, reset=True, structured_output=to_proto(SPEC),
                              prompt_len=len(PROMPT) + 1)
    reply = worker.handle(pb.SpeculationRequest(prefill=pb.PrefillRequest(sequences=[item])))
    assert reply.WhichOneof("kind") == "error" and "prompt_len" in reply.error.message
