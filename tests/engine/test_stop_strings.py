"""The stop-string matcher: matches that straddle pieces, the earliest match, the cut, and the text
a stream holds back while a stop string may be starting; the limits on stop strings."""

from __future__ import annotations

import pytest

from saguaro.errors import InvalidRequestError
from saguaro.llm import LLM
from saguaro.request_rules import MAX_STOP_STRING_CHARS, MAX_STOP_STRINGS, check_stop_strings
from saguaro.sampling import SamplingParams
from saguaro.stop_strings import StopMatch, StopStringMatcher
from saguaro.tiny_models import build_tiny_model


def feed_all(matcher: StopStringMatcher, pieces: list[str]) -> list[str]:
    """What a stream shows for each piece (the last one is final)."""
    return [matcher.feed(p, final=i == len(pieces) - 1) for i, p in enumerate(pieces)]


def test_match_inside_one_piece_cuts_before_it():
    matcher = StopStringMatcher(["END"])
    assert feed_all(matcher, ["hello ", "wENDx", "more"]) == ["hello ", "w", ""]
    assert matcher.match == StopMatch("END", 7, 10)


def test_match_straddling_pieces_that_began_in_an_earlier_piece():
    matcher = StopStringMatcher(["stop here"])
    shown = feed_all(matcher, ["a st", "op h", "ere!", "tail"])
    assert "".join(shown) == "a "
    assert matcher.match == StopMatch("stop here", 2, 11)


def test_include_stop_str_in_output_cuts_after_it():
    matcher = StopStringMatcher(["op h"], include_in_output=True)
    assert "".join(feed_all(matcher, ["a st", "op h", "ere!"])) == "a stop h"


def test_earliest_match_wins_whatever_the_order_of_the_stop_strings():
    matcher = StopStringMatcher(["xyz", "bc", "abcd"])
    assert matcher.feed("__abcd_xyz") == "__"
    assert matcher.match.string == "abcd"  # starts first
    matcher = StopStringMatcher(["abcd", "ab"])
    matcher.feed("__abcd")
    assert matcher.match.string == "ab"  # same start: the shorter one completes first


def test_a_possible_start_is_held_back_and_released_when_it_turns_out_not_to_be():
    matcher = StopStringMatcher(["<|end|>"])
    assert matcher.feed("text <|e") == "text "  # "<|e" may begin the stop string
    assert matcher.feed("nd") == ""  # "<|end" still may
    assert matcher.feed("ing") == "<|ending"  # it did not
    assert matcher.feed("x <") == "x "
    assert matcher.feed("", final=True) == "<"  # the stream ended: nothing can follow
    assert matcher.match is None


def test_held_back_text_is_the_longest_possible_start_of_any_stop_string():
    matcher = StopStringMatcher(["aab", "abc"])
    assert matcher.feed("xaa") == "x"  # "aa" begins "aab"
    assert matcher.feed("b") == ""
    assert matcher.match == StopMatch("aab", 1, 4)


def test_nothing_is_shown_after_a_match():
    matcher = StopStringMatcher(["!"])
    assert matcher.feed("hi!") == "hi"
    assert matcher.feed("more", final=True) == ""


def test_stop_string_limits_are_one_rule():
    check_stop_strings(["a", "b" * MAX_STOP_STRING_CHARS])
    with pytest.raises(InvalidRequestError, match="at most 16"):
        check_stop_strings(["x"] * (MAX_STOP_STRINGS + 1))
    with pytest.raises(InvalidRequestError, match=r"stop\[1\] must be a non-empty string"):
        check_stop_strings(["a", ""])
    with pytest.raises(InvalidRequestError, match=r"stop\[0\] is 257 characters"):
        check_stop_strings(["c" * (MAX_STOP_STRING_CHARS + 1)])
    with pytest.raises(InvalidRequestError, match="non-empty"):
        SamplingParams(stop=[""]).validate()
    assert SamplingParams(stop="one").stop == ["one"]  # a single string, as OpenAI accepts it


def test_stop_strings_need_a_tokenizer(tmp_path):
    model = build_tiny_model(tmp_path / "bare", family="llama", with_tokenizer=False)
    llm = LLM(str(model), block_size=8, kv_cache_bytes=1 << 22, max_model_len=64, show_progress=False)
    with pytest.raises(InvalidRequestError, match="no tokenizer.json: use stop_token_ids"):
        llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, stop=["x"]))
    assert llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4))[0].token_ids  # the engine goes on
