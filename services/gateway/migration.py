"""Mid-stream migration: a request whose target fails after the first token goes on elsewhere.

The gateway remembers what it relayed (token ids and text) and re-sends the request to another
target with ``GenerateRequest.resume`` set to it. The target then decodes after prompt + those
tokens, counts them against ``max_tokens``, continues the offsets and the text exactly where the
broken stream stopped, and reports usage for the whole request (inference.proto, ``Resume``), so
the client sees one uninterrupted stream: at temperature 0 token-for-token what an unbroken run
gives. This module holds the gateway's bookkeeping (what was relayed: ``saguaro.resume``);
``Dispatcher`` decides when to migrate.
"""

from __future__ import annotations

import time

from saguaro.resume import ReceivedOutput
from saguaro.v1 import inference_pb2 as pb

OUTCOMES = ("resumed", "exhausted", "failed", "unsupported")  # saguaro_gateway_migrations_total{outcome}


class Progress:
    """One relayed request as the gateway sees it: what the client holds of its output (the
    tokens and text relayed, after those it brought itself when resuming through the gateway),
    when the first of it went out, and how often it migrated."""

    __slots__ = ("first_token_at", "migrations", "output")

    def __init__(self, request: pb.GenerateRequest):
        self.output = ReceivedOutput.of_request(request)
        self.first_token_at: float | None = None  # time.perf_counter() of the first message relayed
        self.migrations = 0

    def relayed(self, message: pb.GenerateResponse) -> None:
        """Account a message just relayed to the client."""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        if message.HasField("delta"):
            self.output.add(message.delta)

    def continues(self, message: pb.GenerateResponse) -> bool:
        """The first message of a resumed stream picks up at our offset (a target that ignores
        ``resume`` restarts at 0: its tokens would repeat)."""
        return not message.HasField("delta") or self.output.continues(message.delta)

    def finish(self, final: pb.GenerateFinal, arrival: float) -> None:
        """After a migration the target's timings cover only its own part: report the whole
        request as the gateway saw it (``queue_s`` stays the last target's)."""
        if self.migrations and self.first_token_at is not None:
            final.timings.time_to_first_token_s = self.first_token_at - arrival
            final.timings.total_s = time.perf_counter() - arrival


def resumed_prompt(request: pb.GenerateRequest) -> list[int]:
    """The tokens a target prefills for ``request``: prompt, then the resumed completion."""
    return [*request.prompt_token_ids.ids, *request.resume.token_ids]
