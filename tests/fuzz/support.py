"""Hypothesis profiles and the strategies the fuzz tests share (``from fuzz.support import ...``).

Two profiles, chosen by ``SAGUARO_FUZZ_PROFILE``:

* ``ci`` (default): a few hundred examples per pure-parser test, a few dozen per live-server
  test, so the whole of tests/fuzz stays around a minute on one busy core;
* ``long``: over 100 000 examples across the parsers (``bench/fuzz_long.py`` runs it).

Each test names its cost class (``PARSER``, ``WORKER``, ``LIVE``, ``LOADING``); the class gives its
examples under each profile (``ATHERIS_RUNS``: libFuzzer inputs per atheris harness). Tests take
their settings from ``fuzz_settings`` instead of loading a profile globally, so running tests/fuzz
next to other hypothesis tests changes nothing for those.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from saguaro.v1 import speculation_pb2 as pb

PROFILE = os.environ.get("SAGUARO_FUZZ_PROFILE", "ci")
PARSER = {"ci": 200, "long": 10_000}  # pure functions: milliseconds per example
WORKER = {"ci": 40, "long": 3_000}  # the draft worker on a real model, no socket
LIVE = {"ci": 40, "long": 400}  # a round trip to a real server per example
LOADING = {"ci": 12, "long": 120}  # loads a model per example
ATHERIS_RUNS = {"ci": 3_000, "long": 1_000_000}  # tests/fuzz/atheris_*.py
_COMMON = dict(deadline=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
for _name in ("ci", "long"):
    settings.register_profile(_name, max_examples=PARSER[_name], **_COMMON)
if PROFILE not in PARSER:
    raise RuntimeError(f"SAGUARO_FUZZ_PROFILE must be ci or long, got {PROFILE!r}")


def fuzz_settings(cost: dict[str, int] = PARSER) -> settings:
    """The active profile with the examples of the test's cost class."""
    return settings(settings.get_profile(PROFILE), max_examples=cost[PROFILE])


# -- JSON ----------------------------------------------------------------------------------------
def text(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    """Any text, sometimes with lone surrogates and control characters: JSON escapes can spell
    them ("\\ud800") and json.loads accepts them, though they are not valid Unicode."""
    odd = st.characters(codec=None, categories=["Cs", "Cc", "Ll", "Lu", "Nd", "Zs", "Po"])
    return st.text(min_size=min_size, max_size=max_size) | st.text(odd, min_size=min_size, max_size=max_size)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


def mostly(valid: st.SearchStrategy, other: st.SearchStrategy = JSON, odds: int = 3) -> st.SearchStrategy:
    """Valid values ``odds`` times as often as anything else, so that many requests get past the
    first check and reach the deeper ones (and some are served)."""
    # (one_of's branch choice is not uniform; an integer draw is closer to it)
    return st.integers(0, odds).flatmap(lambda i: other if i == odds // 2 else valid)


def sometimes_wrong(valid: st.SearchStrategy, other: st.SearchStrategy = JSON) -> st.SearchStrategy:
    return mostly(valid, other, odds=9)


# -- numbers and protobuf scalars --------------------------------------------------------------
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)  # any float32, NaN and infinities included
UINT32 = st.integers(0, 2**32 - 1)
INT32 = st.integers(-2**31, 2**31 - 1)
ENUM = st.integers(0, 2**31 - 1)  # protobuf enums are int32 on the wire; unknown values must be tolerated


@st.composite
def speculation_configs(draw) -> pb.SpeculationConfig:
    """Mostly plausible sessions (fan-out lists of K + 1 entries), sometimes any uint32s."""
    k = draw(mostly(st.integers(0, 8), UINT32))
    plausible = st.lists(st.integers(0, 4), min_size=min(k, 64) + 1, max_size=min(k, 64) + 1)
    lists = mostly(st.just([]) | plausible, st.lists(UINT32, max_size=10))
    config = pb.SpeculationConfig(
        lookahead_k=k, fan_out=draw(mostly(st.integers(0, 4), UINT32)), fan_out_list_hit=draw(lists),
        fan_out_list_miss=draw(lists), backup_policy=draw(mostly(st.integers(0, 3), ENUM)),
        jit_max_batch_size=draw(UINT32), probs_dtype=draw(mostly(st.integers(0, 3), ENUM)),
        fan_out_policy=draw(mostly(st.integers(0, 2), ENUM)))
    downweight = draw(st.none() | FLOATS)
    if downweight is not None:
        config.saguaro_downweight = downweight
    return config


SPECULATION_CONFIG = speculation_configs()


# -- OpenAI request bodies -----------------------------------------------------------------------
MODEL_NAME = "llama"  # the folder name of the tiny target model (tests/conftest.py)
CONTEXT = 64  # the targets' max_model_len: a short context keeps valid random requests short
OPTIONAL_FIELDS = {
    "max_tokens": sometimes_wrong(st.integers(1, 6), st.integers() | JSON),
    "temperature": sometimes_wrong(st.sampled_from([0, 0.7, 2]), st.floats(-1, 3) | JSON),
    "top_p": sometimes_wrong(st.sampled_from([0.5, 1]), st.floats(-0.5, 1.5) | JSON),
    "top_k": sometimes_wrong(st.integers(-1, 50)),
    "seed": sometimes_wrong(st.integers(0, 2**64 - 1), st.integers() | JSON),
    "stream": sometimes_wrong(st.booleans()),
    "stream_options": sometimes_wrong(st.fixed_dictionaries({"include_usage": st.booleans(),
                                                             "continuous_usage_stats": st.booleans()})),
    "stop_token_ids": sometimes_wrong(st.lists(st.integers(3, 499), max_size=3),
                                      st.lists(st.integers(), max_size=3) | JSON),
    "ignore_eos": sometimes_wrong(st.booleans()),
    "mode": sometimes_wrong(st.sampled_from(["ar", None]), st.sampled_from(["ssd", "sd", "x"]) | JSON),
    "n": sometimes_wrong(st.integers(1, 2), st.integers(-1, 20) | JSON),
    "stop": sometimes_wrong(st.none() | st.just("") | st.text(min_size=1, max_size=3)
                            | st.lists(st.text(min_size=1, max_size=3), max_size=3),
                            st.sampled_from([[""], ["", "x"]]) | JSON),
    "logprobs": sometimes_wrong(st.sampled_from([None, False]), JSON),
    "max_completion_tokens": sometimes_wrong(st.none() | st.integers(1, 6), st.integers() | JSON),
    "stream_tokens_individually": sometimes_wrong(st.booleans()),
    "response_format": sometimes_wrong(st.just({"type": "text"}), st.fixed_dictionaries({"type": JSON}) | JSON),
    "presence_penalty": sometimes_wrong(st.sampled_from([None, 0]), JSON),
    "user": sometimes_wrong(st.text(max_size=10)),
}
MODEL = mostly(st.just(MODEL_NAME), st.sampled_from(["other", ""]) | JSON)
PROMPT_VALUE = mostly(text(1, 60) | st.lists(st.integers(3, 499), min_size=1, max_size=30)
                      | st.lists(text(1, 20), min_size=1, max_size=3),
                      st.lists(st.integers(), max_size=30) | st.lists(st.text(max_size=5), max_size=3) | JSON)
TEXT_PART = st.fixed_dictionaries({"type": st.just("text"), "text": text()})
CONTENT = mostly(text(max_size=30) | st.lists(TEXT_PART, max_size=2),
                 st.lists(st.fixed_dictionaries({"type": JSON, "text": JSON}), max_size=2) | JSON)
MESSAGES = mostly(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                  "content": CONTENT}), min_size=1, max_size=3),
                  st.lists(st.fixed_dictionaries({"role": JSON, "content": JSON}), max_size=2) | JSON)
BODIES = {
    "completions": mostly(st.fixed_dictionaries({"model": MODEL, "prompt": PROMPT_VALUE}, optional=OPTIONAL_FIELDS)),
    "chat": mostly(st.fixed_dictionaries({"model": MODEL, "messages": MESSAGES}, optional=OPTIONAL_FIELDS)),
}
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


def damaged(valid: bytes) -> st.SearchStrategy[bytes]:
    """Byte-level damage to a valid encoding: truncated, a byte changed, junk appended or spliced in."""
    n = len(valid)
    return st.one_of(
        st.integers(0, n).map(lambda i: valid[:i]),
        st.tuples(st.integers(0, max(n - 1, 0)), st.integers(0, 255)).map(
            lambda t: valid[:t[0]] + bytes([t[1]]) + valid[t[0] + 1:]),
        st.binary(max_size=40).map(lambda junk: valid + junk),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=20)).map(
            lambda t: valid[:t[0]] + t[1] + valid[t[0]:]),
    )


VALID_BODY = b'{"model": "llama", "prompt": [3, 4, 5], "max_tokens": 2, "temperature": 0}'
RAW_BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(str.encode),
    damaged(VALID_BODY),
    st.sampled_from([b"", b"null", b"[]", b"{}", b'"x"', b"1e999", b"-0", b"{" * 5000, b"[" * 100_000,
                     b'{"model": "llama", "prompt": "\\ud800"}', b'{"model": "llama", "model": 1}',
                     b"\xef\xbb\xbf{}", b'{"model": "llama", "prompt": [3], "max_tokens": 1' + b"0" * 5000 + b"}"]),
)
