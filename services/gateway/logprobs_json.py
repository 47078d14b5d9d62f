"""The target's log probabilities (``TokenLogprob`` messages) as OpenAI's ``logprobs`` objects.

Completions (``logprobs: int``): ``{tokens, token_logprobs, top_logprobs, text_offset}``, where
each ``top_logprobs`` entry maps token text to log probability for the position's token and
its ``logprobs`` most likely alternatives (so up to ``logprobs + 1`` entries, as vLLM's). With
``echo`` the prompt's positions come first, the first one's log probability and alternatives
null. Chat (``logprobs: true``, ``top_logprobs: int``): ``{content: [{token, logprob, bytes,
top_logprobs: [{token, logprob, bytes}]}]}``. Token texts are each id decoded alone; log
probabilities below -9999 (minus infinity) are sent as -9999.0, as vLLM's, since JSON has no
infinity. The values themselves are the target's raw log probabilities (docs/speculation.md,
"Log probabilities").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from saguaro.services.gateway.tokenization import GatewayTokenizer
from saguaro.v1 import inference_pb2 as pb

FLOOR = -9999.0


def _value(logprob: float) -> float:
    return max(logprob, FLOOR)


def _ids(scored: Sequence[pb.TokenLogprob]) -> list[int]:
    return [i for s in scored for i in (s.token_id, *s.top_token_ids)]


@dataclass
class CompletionLogprobs:
    """One completion choice's ``logprobs`` object, grown delta by delta (``text_offset`` runs
    on across them: a stream's chunks carry the slices ``add`` returns)."""

    tokenizer: GatewayTokenizer
    offset: int = 0  # characters of the choice's text before the next token
    whole: dict = field(default_factory=lambda: {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                                 "text_offset": []})

    def add(self, scored: Sequence[pb.TokenLogprob], unscored_first: int | None = None) -> dict:
        """Append positions; ``unscored_first``: a token before them with no log probability
        (the echoed prompt's first). Returns the part just added, as its own object."""
        texts = iter(self.tokenizer.token_texts(([] if unscored_first is None else [unscored_first]) + _ids(scored)))
        part: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

        def position(text: str, logprob: float | None, top: dict | None) -> None:
            for key, value in zip(part, (text, logprob, top, self.offset)):
                part[key].append(value)
            self.offset += len(text)

        if unscored_first is not None:
            position(next(texts), None, None)
        for s in scored:
            text = next(texts)
            top = {next(texts): _value(v) for v in s.top_logprobs}
            position(text, _value(s.logprob), {text: _value(s.logprob), **top})
        for key, values in part.items():
            self.whole[key].extend(values)
        return part


def chat_logprobs(tokenizer: GatewayTokenizer, scored: Sequence[pb.TokenLogprob]) -> list[dict]:
    """``logprobs.content`` entries of a chat choice's tokens."""
    texts = iter(tokenizer.token_texts(_ids(scored)))

    def entry(logprob: float) -> dict:
        text = next(texts)
        return {"token": text, "logprob": _value(logprob), "bytes": list(text.encode("utf-8"))}

    return [{**entry(s.logprob), "top_logprobs": [entry(v) for v in s.top_logprobs]} for s in scored]


class ChoiceLogprobs:
    """One choice's echo and log probabilities, as its deltas arrive (streamed or gathered).
    Runs on the tokenizer's thread (``GatewayTokenizer.run``): it decodes token texts."""

    def __init__(self, kind: str, tokenizer: GatewayTokenizer, prompt: list[int], echo: bool, asked: bool,
                 echo_text: str | None = None):
        """``echo_text``: the prompt's text as sent, echoed as is (None: the prompt's token ids decoded)."""
        self.kind, self.tokenizer, self.prompt, self.echo, self.asked = kind, tokenizer, prompt, echo, asked
        self.echo_text = echo_text
        self.completion = CompletionLogprobs(tokenizer)
        self.content: list[dict] = []  # chat
        self.echoed = not echo

    def delta(self, delta: pb.TokenDelta) -> tuple[str, dict | None, dict | None]:
        """``(echo text, its logprobs, the delta's logprobs)``: the echoed prompt comes with
        the choice's first delta (its prompt log probabilities ride on it); "" and None after
        that, or when not asked."""
        echo, echo_scores = "", None
        if not self.echoed:
            self.echoed = True
            echo = self.echo_text if self.echo_text is not None else self.tokenizer.decode(self.prompt)
            if self.asked:
                echo_scores = self.completion.add(delta.prompt_logprobs, unscored_first=self.prompt[0])
        if not self.asked:
            return echo, echo_scores, None
        if self.kind == "completions":
            return echo, echo_scores, self.completion.add(delta.logprobs)
        content = chat_logprobs(self.tokenizer, delta.logprobs)
        self.content.extend(content)
        return echo, echo_scores, {"content": content}

    def whole(self) -> dict | None:
        """The choice's ``logprobs`` object so far (None when not asked)."""
        if not self.asked:
            return None
        return self.completion.whole if self.kind == "completions" else {"content": self.content}
