"""Mid-stream migration: a request whose target fails after the first token goes on elsewhere.

The gateway remembers what it relayed (token ids and text) and re-sends the request to another
target with ``GenerateRequest.resume`` set to it. The target then decodes after prompt + those
tokens, counts them against ``max_tokens``, continues the offsets and the text exactly where the
broken stream stopped, and reports usage for the whole request (inference.proto, ``Resume``), so
the client sees one uninterrupted stream: at temperature 0 token-for-token what an unbroken run
gives. This module holds the bookkeeping; ``Dispatcher`` decides when to migrate.
"""

from __future__ import annotations

import time

from saguaro.v1 import inference_pb2 as pb

OUTCOMES = ("resumed", "exhausted", "failed", "unsupported")  # saguaro_gateway_migrations_total{outcome}


class Progress:
    """What the client holds of one request's output: the tokens and text relayed, after those
    it brought itself (a client resuming through the gateway)."""

    __slots__ = ("first_token_at", "migrations", "texts", "token_ids")

    def __init__(self, request: pb.GenerateRequest):
        resume = request.resume if request.HasField("resume") else None
        self.token_ids: list[int] = list(resume.token_ids) if resume is not None else []
        self.texts: list[str] = [resume.text] if resume is not None and resume.text else []
        self.first_token_at: float | None = None  # time.perf_counter() of the first message relayed
        self.migrations = 0

    def relayed(self, message: pb.GenerateResponse) -> None:
        """Account a message just relayed to the client."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if message.HasField("delta"):
            delta = message.delta
            self.token_ids.extend(delta.token_ids)
            if delta.text:
                self.texts.append(delta.text)

    def resume(self) -> pb.Resume:
        return pb.Resume(token_ids=self.token_ids, text="".join(self.texts))

    def continues(self, message: pb.GenerateResponse) -> bool:
        """The first message of a resumed stream picks up at our offset (a target that ignores
        ``resume`` restarts at 0: its tokens would repeat)."""
        return not message.HasField("delta") or message.delta.offset == len(self.token_ids)

    def finish(self, final: pb.GenerateFinal, arrival: float) -> None:
        """After a migration the target's timings cover only its own part: report the whole
        request as the gateway saw it (``queue_s`` stays the last target's)."""
        if self.migrations and self.first_token_at is not None:
            final.timings.time_to_first_token_s = self.first_token_at - arrival
            final.timings.total_s = time.perf_counter() - arrival


def resumed_prompt(request: pb.GenerateRequest) -> list[int]:
    """The tokens a target prefills for ``request``: prompt, then the resumed completion."""
    return [*request.prompt_token_ids.ids, *request.resume.token_ids]
