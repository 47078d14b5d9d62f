"""Incremental detokenisation: text for new tokens without decoding the whole completion again.

Decoding the full completion on every delta costs O(n) per delta, O(n²) per stream, and it
holds the tokenizer's lock (a fast tokenizer is not thread safe) for all of it. A token's text
can depend on its neighbours (a leading-space marker dropped at the start of a decode, a
multi-byte character split over several byte tokens), so each step decodes a short window: the
tokens since the last emitted boundary (``prefix``) with and without the new ones, and emits
the difference. Text that ends in U+FFFD may be half a character, so it waits for the token
that completes it (or for the end of the stream). The scheme is the one vLLM and TGI use.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from saguaro.errors import InvalidRequestError
from saguaro.tokenizer import decode

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5  # tokens before the first new one that a resumed stream's window starts with
MAX_HELD_TOKENS = 4  # a UTF-8 character has at most 4 bytes, so at most 4 byte tokens wait for its end


class IncrementalDetokenizer:
    """The text of one stream's tokens, piece by piece; ``push`` returns each new piece.

    ``resumed_ids``/``resumed_text``: a stream that continues one broken elsewhere starts from
    the tokens and text its client already has, so the text continues exactly where the broken
    stream stopped (a character split across the break comes out whole).
    """

    def __init__(self, tokenizer, lock: threading.Lock, resumed_ids: Sequence[int] = (), resumed_text: str = ""):
        self.tokenizer = tokenizer
        self.lock = lock
        self.token_ids: list[int] = list(resumed_ids)
        self._pending = ""  # text of resumed tokens that the client has not received yet
        self._read = len(self.token_ids)  # tokens whose text has been emitted (or is pending)
        if self.token_ids:
            with lock:
                self._read, self._pending = self._resume_point(resumed_text)
        self._prefix = max(0, self._read - CONTEXT_TOKENS)  # the window's first token

    def _resume_point(self, sent: str) -> tuple[int, str]:
        """Where the broken stream stood: the most resumed tokens whose text is exactly ``sent``
        (the stream held back the rest, half a character), else all of them with the text the
        client lacks as pending. Runs once per resumed request, so full decodes are fine here."""
        ids = self.token_ids
        text = decode(self.tokenizer, ids)
        if not text.startswith(sent):
            raise InvalidRequestError("resume.text is not the text of resume.token_ids (nor a prefix of it): "
                                      "send the text received with those tokens")
        for read in range(len(ids), max(0, len(ids) - MAX_HELD_TOKENS) - 1, -1):
            if (text if read == len(ids) else decode(self.tokenizer, ids[:read])) == sent:
                return read, ""
        return len(ids), text[len(sent):]

    def push(self, token_ids: Sequence[int], flush: bool) -> str:
        """Append ``token_ids``; the text they complete. ``flush``: the stream ends here, so
        emit even a trailing U+FFFD."""
        self.token_ids.extend(token_ids)
        window = self.token_ids[self._prefix:]
        with self.lock:
            before = decode(self.tokenizer, window[: self._read - self._prefix])
            after = decode(self.tokenizer, window)
        if not flush and after.endswith(REPLACEMENT):
            return ""
        piece, self._pending = self._pending + after[len(before):], ""
        if len(after) > len(before):  # the window moves on only once its tokens gave text
            self._prefix, self._read = self._read, len(self.token_ids)
        return piece
