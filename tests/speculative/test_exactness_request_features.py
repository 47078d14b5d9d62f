"""Logits processors, stop strings and log probabilities along the greedy matrix's other axes.

test_exactness_processors / _stop_strings / _logprobs cover each feature in AR, SD and SSD at
several K and batch sizes, in process. Here the axes only the plain greedy matrix
(test_exactness_greedy.py) had reach them too: transports (gRPC, unix socket,
torch.distributed), backup policies (fast, adaptive), fan-out 1 and 3, batch 8, prefix caching
off, forced preemption and two draft workers; a few representative combinations rather than the
cross product. Each case runs one mixed batch: every processor (alone and combined), stop strings
(with and without the stop in the output) and log probabilities (prompt and output), each request
checked against its transformers reference from those modules.
"""

from __future__ import annotations

import pytest

from saguaro import SamplingParams
from saguaro.llm import LLM
from saguaro.tokenizer import load_tokenizer
from speculative.test_exactness_greedy import Case, build
from speculative.test_exactness_logprobs import TOP, assert_matches
from speculative.test_exactness_logprobs import reference as logprobs_reference
from speculative.test_exactness_processors import NEW_TOKENS as PROCESSED_TOKENS
from speculative.test_exactness_processors import reference as processed_reference
from speculative.test_exactness_processors import request_params
from speculative.test_exactness_stop_strings import NEW_TOKENS as STOP_TOKENS
from speculative.test_exactness_stop_strings import pick_stop
from speculative.test_exactness_stop_strings import reference as stop_reference
from tests_support import hf_greedy, make_prompts

pytestmark = pytest.mark.slow  # a speculative engine (and draft servers) per case, mixed batches of ~20 requests

LOGPROB_TOKENS = 10
CASES = [
    Case("ssd", "llama", "llama_draft_perturbed", 8, 3, 3, "fast", preempt=True, transport="grpc"),
    Case("ssd", "llama", "llama_draft_copy", 4, 6, 1, "adaptive", prefix_caching=False, transport="unix"),
    Case("sd", "llama", "llama_draft_perturbed", 8, 3, 1, preempt=True),
    Case("ssd", "llama", "llama_draft_perturbed", 4, 3, 2, transport="torch.distributed", workers=2),
]


@pytest.fixture(scope="module")
def requests(model_dirs) -> list[tuple[list[int], SamplingParams, object]]:
    """(prompt, params, expected) for every request of the mixed batch; ``expected`` is the
    processed greedy tokens, the (tokens, text, stop) of a stop-string request, or None for a
    log-probability request (checked against transformers' log_softmax of what it generated).
    Prompts stay short enough for the preemption cases' 64-token context."""
    model = model_dirs["llama"]
    tokenizer = load_tokenizer(model)
    eos = frozenset({1})  # the tiny models' EOS (config.json's eos_token_id)
    out = []
    for i, prompt in enumerate(make_prompts(9, 380, seed=5, min_len=4, max_len=24)):  # (as that module's batch)
        params = request_params(prompt, hf_greedy(model, prompt, PROCESSED_TOKENS))
        kind = list(params)[i]
        out.append((prompt, params[kind], processed_reference(model, prompt, params[kind], eos)))
    stops = 0
    for i, prompt in enumerate(make_prompts(8, 380, seed=5, min_len=4, max_len=20)):
        generated = hf_greedy(model, prompt, STOP_TOKENS)
        stop = pick_stop(tokenizer, generated, 5 + i % 9) if len(generated) > 10 + i % 9 else None
        if stop is not None:
            include, stops = i % 2 == 0, stops + 1
            stops_asked = [stop, "zzzz-never"]
            params = SamplingParams(max_tokens=STOP_TOKENS, stop=stops_asked, include_stop_str_in_output=include)
            expected = stop_reference(tokenizer, generated, stops_asked, include)
            assert expected[2] == stop  # (the stop string is met before max_tokens)
            out.append((prompt, params, expected))
    assert stops >= 3
    for prompt in make_prompts(4, 380, seed=6, min_len=3, max_len=16):
        out.append((prompt, SamplingParams(max_tokens=LOGPROB_TOKENS, logprobs=TOP, prompt_logprobs=2), None))
    return out


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(str(v) for v in vars(c).values()))
def test_processors_stop_strings_and_logprobs_are_exact_along_the_matrix(model_dirs, requests, case):
    engine, servers = build(model_dirs, case)
    try:
        llm = LLM.from_engine(engine, load_tokenizer(model_dirs["llama"]))
        outputs = llm.generate([prompt for prompt, _, _ in requests], [params for _, params, _ in requests])
        stats = [o.stats for o in outputs]
        assert all(s["mode"] == case.mode and s["transport"] == case.transport for s in stats)
        assert all(s["fallback_rounds"] == 0 for s in stats)  # the draft never failed
        if case.mode == "ssd":  # the speculation cache served rounds of processed requests
            assert sum(s["cache_hits"] for s, (_, params, _) in zip(stats, requests)
                       if params.presence_penalty or params.logit_bias or params.repetition_penalty != 1) > 0
        if case.preempt:
            assert engine.scheduler.num_preemptions > 0
        for (prompt, params, expected), out in zip(requests, outputs):
            if params.stop:
                tokens, text, stop = expected
                assert (out.token_ids, out.text, out.stop_string) == (tokens, text, stop)
            elif params.logprobs is not None:
                ref = logprobs_reference(model_dirs["llama"], prompt + out.token_ids)
                assert out.token_ids == hf_greedy(model_dirs["llama"], prompt, LOGPROB_TOKENS)
                assert len(out.prompt_logprobs) == len(prompt) - 1
                for i, scored in enumerate(out.logprobs):
                    assert_matches(scored, ref[len(prompt) - 1 + i], TOP)
                for j, scored in enumerate(out.prompt_logprobs):
                    assert scored.token_id == prompt[j + 1]
                    assert_matches(scored, ref[j], 2)
            else:
                assert out.token_ids == expected, params
    finally:
        engine.proposer.close()
        for server in servers:
            server.stop(None)
