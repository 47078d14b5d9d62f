"""Structured output is exact in every mode: greedy tokens under a JSON schema, a regex and a
choice equal transformers' greedy decoding of the target with llguidance's mask applied at each
step (written here with llguidance directly), in AR, SD and SSD at several K and fan-outs, in one
batch with a request that has no grammar. The draft masks its proposals with the same grammar:
every proposal is inside it, a draft equal to the target has every proposal accepted, and a draft
that cannot mask (no tokenizer) accepts fewer (docs/speculation.md, "Structured output").
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import llguidance
import llguidance.hf
import pytest
import torch
from transformers import AutoTokenizer

from saguaro import SamplingParams
from saguaro.config import EngineConfig, ModelConfig
from saguaro.engine import LLMEngine
from saguaro.errors import InvalidRequestError
from saguaro.llm import LLM
from saguaro.services.target.local import speculative_engine
from saguaro.speculative.settings import DraftSettings
from saguaro.structured_output import StructuredOutput
from saguaro.tiny_models import build_tiny_model, perturbed_copy
from saguaro.v1 import speculation_pb2 as pb
from tests_support import assert_same_law, hf_logits, hf_model, make_prompts

NEW_TOKENS = 24
EOS = 1  # the tiny tokenizer's <|eos|>
SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"},
                                           "n": {"enum": [1, 22, 333]}},
          "required": ["name", "ok", "n"], "additionalProperties": False}
REGEX = r"(def|class) [a-z_]{1,8}\((a|b)?\):"
CHOICES = ("yes", "no", "maybe so", "print")

# What each request asks, as Saguaro's spec and as the llguidance grammar the reference builds.
SPECS = {
    "json": (StructuredOutput.json_schema(SCHEMA),
             llguidance.LLMatcher.grammar_from_json_schema(SCHEMA, defaults={"whitespace_flexible": False})),
    "regex": (StructuredOutput.regex(REGEX), llguidance.LLMatcher.grammar_from_regex(REGEX)),
    "choice": (StructuredOutput.choice(CHOICES),
               llguidance.LLMatcher.grammar_from_lark("start: " + " | ".join(f'"{c}"' for c in CHOICES))),
    "none": (None, None),
}


def reference_matcher(model_dir: str, grammar: str) -> llguidance.LLMatcher:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab = hf_model(model_dir).config.vocab_size
    return llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=EOS), grammar,
                                log_level=0)


def reference(model_dir: str, prompt: list[int], grammar: str | None) -> list[int]:
    """transformers' greedy decoding, each step's logits masked by llguidance's allowed tokens."""
    model = hf_model(model_dir)
    matcher = reference_matcher(model_dir, grammar) if grammar is not None else None
    ids, out = list(prompt), []
    with torch.inference_mode():
        for _ in range(NEW_TOKENS):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            if matcher is not None:
                allowed = torch.tensor(list(matcher.compute_logit_bias()))[:logits.shape[0]] > 0
                logits = logits.masked_fill(~allowed, float("-inf"))
            token = int(logits.argmax())
            out.append(token)
            ids.append(token)
            if token == EOS:
                break
            if matcher is not None:
                assert matcher.consume_token(token), matcher.get_error()
    return out


@pytest.fixture(scope="module")
def batch(model_dirs):
    """Two requests of each kind on varied prompts, with their reference tokens."""
    model = model_dirs["llama"]
    kinds = [kind for kind in SPECS for _ in range(2)]
    prompts = make_prompts(len(kinds), 380, seed=11, min_len=4, max_len=20)
    params = [SamplingParams(max_tokens=NEW_TOKENS, structured_output=SPECS[kind][0]) for kind in kinds]
    expected = [reference(model, p, SPECS[kind][1]) for p, kind in zip(prompts, kinds)]
    free = [reference(model, p, None) for p in prompts]
    assert all(e != f for e, f, kind in zip(expected, free, kinds) if kind != "none"), \
        "every grammar must change its request's greedy output, or the test proves nothing"
    return kinds, prompts, params, expected


def config(model: str, batch_size: int) -> EngineConfig:
    return EngineConfig(model=model, block_size=8, kv_cache_bytes=1 << 24, max_model_len=256, max_num_seqs=batch_size,
                        show_progress=False)


def engine(model_dirs, mode: str, draft: str | None, k: int, fan_out: int, batch_size: int,
           backup: int = pb.BACKUP_POLICY_JIT, preempt: bool = False):
    """``preempt``: a target cache of 14 blocks (~2 sequences) preempts the batch's sequences."""
    target = config(model_dirs["llama"], batch_size)
    if preempt:
        facts = ModelConfig.from_dir(model_dirs["llama"])
        target = replace(target, kv_cache_bytes=2 * facts.num_layers * facts.num_kv_heads * facts.head_dim * 4 * 8 * 14,
                         max_model_len=64)
    if mode == "ar":
        return LLMEngine(target)
    settings = DraftSettings(k=k, fan_out=fan_out, backup_policy=backup)
    draft_dir = model_dirs[draft] if draft in model_dirs else draft
    return speculative_engine(target, mode, config(draft_dir, batch_size), settings, draft_soft_deadline=False)


def run(eng, prompts, params) -> tuple[list, list]:
    """The outputs, and every verified proposal (with its request's spec, the output committed
    before it and how many of it the target accepted)."""
    rounds = []
    observe = eng._observe if hasattr(eng, "_observe") else None

    def record(result, trace):
        for row in result.rows:
            if row.proposal is not None:
                before = row.seq.output_token_ids[:row.seq.num_output_tokens - row.committed]
                rounds.append((row.seq.params.structured_output, before, list(row.proposal.tokens), row.accepted))
        observe(result, trace)

    if observe is not None:
        eng._observe = record
    try:
        return LLM.from_engine(eng, None).generate(prompts, params), rounds
    finally:
        if observe is not None:
            eng.proposer.close()


FAST = pb.BACKUP_POLICY_FAST  # placeholders: proposals outside the grammar, rows after them unreachable


@pytest.mark.parametrize("mode,draft,k,fan_out,options", [
    ("ar", None, 0, 0, {}),
    ("ar", None, 0, 0, {"preempt": True}),
    ("sd", "llama_draft_perturbed", 3, 2, {}),
    ("sd", "llama_draft_random", 2, 1, {"preempt": True}),
    ("ssd", "llama_draft_perturbed", 3, 2, {}),
    ("ssd", "llama_draft_random", 2, 3, {}),
    ("ssd", "llama_draft_perturbed", 4, 1, {"backup": FAST}),
    ("ssd", "llama_draft_perturbed", 3, 2, {"backup": FAST, "preempt": True}),
])
def test_greedy_tokens_equal_masked_transformers(model_dirs, batch, mode, draft, k, fan_out, options):
    kinds, prompts, params, expected = batch
    eng = engine(model_dirs, mode, draft, k, fan_out, len(prompts), **options)
    outputs, _ = run(eng, prompts, params)
    assert [o.token_ids for o in outputs] == expected
    if mode == "ssd":  # the masked tree was built and used (a build that raised would leave only misses)
        assert sum(o.stats["cache_hits"] for o, kind in zip(outputs, kinds) if kind != "none") > 0
    if options.get("preempt"):
        assert eng.scheduler.num_preemptions > 0
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["llama"])
    for kind, out in zip(kinds, outputs):
        if kind == "choice" and out.finish_reason == "stop":
            assert tokenizer.decode(out.token_ids, skip_special_tokens=True) in CHOICES


def test_a_resumed_request_continues_inside_the_grammar(model_dirs, batch):
    """A migrated stream's tokens (``output_token_ids``) advance the grammar before decoding
    goes on; tokens the grammar rejects are refused."""
    kinds, prompts, params, expected = batch
    i = kinds.index("json")
    eng = engine(model_dirs, "ar", None, 0, 0, 1)
    seq = eng.add_request(prompts[i], params[i], expected[i][:5])
    while eng.has_work():
        eng.step()
    assert seq.output_token_ids == expected[i]
    with pytest.raises(InvalidRequestError, match="structured_output"):
        eng.add_request(prompts[i], params[i], [expected[i][1]] * 3)


def test_ignore_eos_still_ends_a_whole_output(model_dirs, batch):
    """EOS is allowed only where the grammar's output is whole, so it ends the request even
    with ignore_eos (which otherwise decodes past EOS)."""
    kinds, prompts, params, expected = batch
    i = kinds.index("choice")
    assert expected[i][-1] == EOS
    out = LLM.from_engine(engine(model_dirs, "ar", None, 0, 0, 1), None).generate(
        prompts[i], replace(params[i], ignore_eos=True))[0]
    assert out.token_ids == expected[i] and out.finish_reason == "stop"


@pytest.mark.parametrize("mode", ["ar", "ssd"])
def test_the_grammar_wins_over_min_tokens(model_dirs, batch, mode):
    """min_tokens holds EOS back, but a whole choice allows only EOS: the grammar wins (the row
    is the grammar's mask of the unprocessed logits), in AR and on SSD's verify rows alike."""
    kinds, prompts, params, expected = batch
    i = kinds.index("choice")
    eng = engine(model_dirs, mode, "llama_draft_perturbed", 3, 2, 1)
    outputs, _ = run(eng, [prompts[i]], [replace(params[i], min_tokens=NEW_TOKENS - 1)])
    assert outputs[0].token_ids == expected[i] and outputs[0].finish_reason == "stop"


def without_tokenizer(model_dir: str, root: Path) -> str:
    """A copy of a draft folder without its tokenizer: that draft cannot mask."""
    blind = root / f"{Path(model_dir).name}_without_tokenizer"
    shutil.copytree(model_dir, blind)
    (blind / "tokenizer.json").unlink()
    return str(blind)


def assert_inside_the_grammar(model_dir: str, rounds: list) -> None:
    """Each proposal is grammar-valid after the output committed before it, up to its end or
    an EOS (where the output is whole, EOS may follow)."""
    grammars = {spec: grammar for spec, grammar in SPECS.values()}
    matchers = {}
    for spec, before, proposal, _ in rounds:
        matcher = matchers.setdefault(spec, reference_matcher(model_dir, grammars[spec]))
        matcher.reset()
        assert matcher.consume_tokens(before)
        valid = matcher.validate_tokens(proposal)
        assert valid == len(proposal) or EOS in proposal[:valid + 1], (before, proposal)


@pytest.mark.parametrize("draft", ["llama_draft_copy", "llama_draft_perturbed"])
def test_draft_proposals_stay_inside_the_grammar(model_dirs, batch, tmp_path, draft):
    """Every proposal of a masking draft is inside the grammar, and a draft equal to the target
    has every proposal accepted; the same draft without a tokenizer cannot mask and accepts
    fewer. Prints both acceptance rates (docs/speculation.md, "Structured output")."""
    kinds, prompts, params, expected = batch
    idx = [i for i, kind in enumerate(kinds) if kind != "none"]
    prompts, params, expected = [prompts[i] for i in idx], [params[i] for i in idx], [expected[i] for i in idx]
    k = 3
    rates = {}
    for name, draft_dir in (("masked", draft), ("unmasked", without_tokenizer(model_dirs[draft], tmp_path))):
        outputs, rounds = run(engine(model_dirs, "ssd", draft_dir, k, 2, len(prompts)), prompts, params)
        assert [o.token_ids for o in outputs] == expected
        rates[name] = sum(accepted for *_, accepted in rounds) / (len(rounds) * k)
        if name == "masked":
            assert_inside_the_grammar(model_dirs["llama"], rounds)
            if draft == "llama_draft_copy":
                assert all(a == len(p) or EOS in p[:a + 1] for _, _, p, a in rounds)
    print(f"\nacceptance per proposed token, SSD K={k} F=2, {draft}: draft masks {rates['masked']:.3f}, "
          f"draft does not mask {rates['unmasked']:.3f}")
    assert rates["masked"] > rates["unmasked"]


SAMPLED_REGEX = r"[abc]{1,2}"  # EOS allowed after one letter (accepting), the only token after two (complete)
SAMPLED_PROMPT = [40, 41, 42]
SAMPLES = 2000


@pytest.fixture(scope="module")
def sampled_pair(tmp_path_factory):
    """A small target with a tokenizer, and a draft far from it (many rejections)."""
    root = tmp_path_factory.mktemp("structured_sampling")
    target = build_tiny_model(root / "target", vocab_size=300, hidden_size=32, intermediate_size=64, init_range=0.6,
                              seed=4)
    return str(target), str(perturbed_copy(target, root / "draft", noise=0.6, seed=5))


@pytest.fixture(scope="module")
def sampled_law(sampled_pair) -> dict[tuple[int, ...], float]:
    return masked_law(sampled_pair[0], SAMPLED_PROMPT, llguidance.LLMatcher.grammar_from_regex(SAMPLED_REGEX))


def masked_law(model_dir: str, prompt: list[int], grammar: str) -> dict[tuple[int, ...], float]:
    """The exact law of the whole output under the target at temperature 1 with llguidance's
    mask, by enumerating every token path the grammar allows (each ends with EOS)."""
    matcher = reference_matcher(model_dir, grammar)
    law: dict[tuple[int, ...], float] = {}

    def walk(out: list[int], prob: float) -> None:
        logits = hf_logits(model_dir, prompt + out)[-1].double()
        allowed = torch.tensor(list(matcher.compute_logit_bias()))[:logits.shape[0]] > 0
        p = logits.masked_fill(~allowed, float("-inf")).softmax(-1)
        for token in allowed.nonzero().flatten().tolist():
            if token == EOS:
                law[(*out, token)] = prob * float(p[token])
                continue
            assert matcher.consume_token(token)
            walk(out + [token], prob * float(p[token]))
            matcher.rollback(1)

    walk([], 1.0)
    return law


@pytest.mark.slow  # chi-square over thousands of sampled requests per mode
@pytest.mark.parametrize("mode, settings", [
    ("ar", None),
    ("sd", DraftSettings(k=2, fan_out=2)),
    ("ssd", DraftSettings(k=2, fan_out=4)),
    ("ssd", DraftSettings(k=1, fan_out=3, downweight=0.5)),
])
def test_sampled_output_has_the_masked_target_law(sampled_pair, sampled_law, mode, settings):
    """Seeded chi-square: SD and SSD with a grammar (rejections, residual draws, cache hits)
    sample the whole output from AR's masked law, enumerated exactly (12 outcomes)."""
    target, draft = sampled_pair
    law, prompt = sampled_law, SAMPLED_PROMPT
    outcomes = sorted(law)
    make = lambda model: EngineConfig(model=model, max_num_seqs=64, block_size=8, kv_cache_bytes=1 << 24,  # noqa: E731
                                      show_progress=False)
    engine = speculative_engine(make(target), mode, make(draft), settings)
    try:
        params = [SamplingParams(max_tokens=4, temperature=1.0, seed=i,
                                 structured_output=StructuredOutput.regex(SAMPLED_REGEX)) for i in range(SAMPLES)]
        outputs = LLM.from_engine(engine, None).generate([prompt] * SAMPLES, params)
    finally:
        if engine.proposer is not None:
            engine.proposer.close()
    counts = torch.zeros(len(outcomes), dtype=torch.float64)
    for out in outputs:
        counts[outcomes.index(tuple(out.token_ids))] += 1  # (a path outside the law raises here)
    print(f"\n{mode}: {len(outcomes)} outcomes, acceptance "
          f"{sum(sum(o.stats.get('accepted_per_position', [])) for o in outputs) / SAMPLES:.2f} tokens/request")
    assert_same_law(counts, torch.tensor([law[o] for o in outcomes], dtype=torch.float64))
    if mode != "ar":
        assert sum(sum(o.stats["accepted_per_position"]) for o in outputs) > 0
    if mode == "ssd":
        assert sum(o.stats["cache_hits"] for o in outputs) > SAMPLES // 10, "the masked tree must be exercised"
