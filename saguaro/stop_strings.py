"""Stop strings: where a growing text first contains one, and how much of it may be shown yet.

The engine feeds each committed token's text (``StopText``) and finishes the sequence at the
token that completes a stop string, so speculative rounds that commit several tokens at once
stop exactly where AR decoding would; the target's stream feeds the same text and cuts it
(``StopStringMatcher.feed``). A stop string may straddle tokens and begin in text an earlier
token produced, so each search covers the new text plus the held-back text before it: the
longest suffix that is still the beginning of a stop string, at most ``max(len(stop)) - 1``
characters. That suffix is also what a stream must not show yet (it may turn out to be part of
the stop string), so the search costs only the new text. Torch-free: the target's API imports it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from saguaro.detokenizer import IncrementalDetokenizer


@dataclass(frozen=True)
class StopMatch:
    """A stop string found in the text: ``start``/``end`` are character offsets in all the text fed."""

    string: str
    start: int
    end: int


class StopStringMatcher:
    """The earliest stop string in text that arrives piece by piece, and the text safe to show.

    The earliest match wins (by its first character; the shortest when two start together),
    whatever the order of ``stops``. After a match, nothing more is shown.
    """

    def __init__(self, stops: Sequence[str], include_in_output: bool = False):
        self.stops = tuple(stops)
        self.include_in_output = include_in_output
        self.match: StopMatch | None = None
        self._held = ""  # the fed text not shown yet: a suffix that may begin a stop string
        self._shown = 0  # characters of the fed text shown so far

    def feed(self, piece: str, final: bool = False, armed: bool = True) -> str:
        """Add ``piece``; return the text that can be shown now. ``final``: no text follows, so
        held-back text is shown unless a stop string ends it. ``armed`` False: a stop string in
        the window does not end the text (``min_tokens`` not reached yet, as vLLM), but one that
        it begins may still be completed by later pieces."""
        if self.match is not None:
            return ""
        window = self._held + piece
        found = self._earliest(window) if armed else None
        if found is not None:
            index, stop = found
            self.match = StopMatch(stop, self._shown + index, self._shown + index + len(stop))
            cut = index + len(stop) if self.include_in_output else index
            self._held, self._shown = "", self._shown + cut
            return window[:cut]
        keep = 0 if final else self._partial_suffix(window)
        shown = window[: len(window) - keep]
        self._held, self._shown = window[len(shown):], self._shown + len(shown)
        return shown

    def _earliest(self, window: str) -> tuple[int, str] | None:
        """(index, stop) of the first stop string in ``window``, or None."""
        best: tuple[int, str] | None = None
        for stop in self.stops:
            index = window.find(stop)
            if index >= 0 and (best is None or (index, len(stop)) < (best[0], len(best[1]))):
                best = (index, stop)
        return best

    def _partial_suffix(self, window: str) -> int:
        """Length of the longest suffix of ``window`` that begins some stop string (shorter than it)."""
        longest = 0
        for stop in self.stops:
            index = window.find(stop[0], max(0, len(window) - len(stop) + 1))
            while index >= 0 and len(window) - index > longest:
                if stop.startswith(window[index:]):
                    longest = len(window) - index
                    break
                index = window.find(stop[0], index + 1)
        return longest


class StopText:
    """One sequence's stop-string check in the engine: its completion's text, one token at a time."""

    def __init__(self, tokenizer, stops: Sequence[str], include_in_output: bool, resumed_ids: Sequence[int] = ()):
        """``resumed_ids``: completion tokens a resumed request already has, so a stop string that
        straddles the break is found (their text itself ended no stop string: its stream went on)."""
        self._text = IncrementalDetokenizer(tokenizer, threading.Lock())  # the engine thread's own
        self.matcher = StopStringMatcher(stops, include_in_output)
        if resumed_ids:
            self.matcher.feed(self._text.push(list(resumed_ids), flush=False))

    def push(self, token: int, armed: bool = True) -> StopMatch | None:
        """Add one committed token; the stop string its text completes, if any (never while
        not ``armed``: the request's ``min_tokens`` are not all generated yet)."""
        self.matcher.feed(self._text.push([token], flush=False), armed=armed)
        return self.matcher.match

    def output_text(self, full_text: str) -> str:
        """The completion's text ``full_text`` (all its tokens decoded) cut at the match."""
        match = self.matcher.match
        if match is None:
            return full_text
        return full_text[: match.end if self.matcher.include_in_output else match.start]
