"""A request's logits processors on the speculation wire (``LogitsProcessing`` of speculation.proto).

The target resolves them once (``saguaro.logits_processors.resolve``) and sends them with the
sequence's prefill, so the draft proposes from the distribution the target verifies against
(docs/speculation.md, "Logits processors").
"""

from __future__ import annotations

import math

from saguaro.logits_processors import LogitsProcessing
from saguaro.v1 import speculation_pb2 as pb


def to_proto(processing: LogitsProcessing, prompt_len: int) -> pb.LogitsProcessing:
    return pb.LogitsProcessing(
        presence_penalty=processing.presence_penalty, frequency_penalty=processing.frequency_penalty,
        repetition_penalty=processing.repetition_penalty, logit_bias=dict(processing.logit_bias),
        min_tokens=processing.min_tokens, min_tokens_stop_ids=processing.min_tokens_stop_ids, prompt_len=prompt_len)


def from_proto(message: pb.LogitsProcessing, vocab_size: int) -> tuple[LogitsProcessing, int]:
    """The processing and the prompt length; ``ValueError`` naming what is out of range (a
    bad token id would index past the draft's vocabulary)."""
    ids = [*message.logit_bias, *message.min_tokens_stop_ids]
    if any(not 0 <= t < vocab_size for t in ids):
        raise ValueError(f"logits processing names token ids outside the draft's vocabulary [0, {vocab_size})")
    values = [message.presence_penalty, message.frequency_penalty, message.repetition_penalty,
              *message.logit_bias.values()]
    if not all(math.isfinite(v) for v in values) or message.repetition_penalty < 0:
        raise ValueError("logits processing has a non-finite value or a negative repetition_penalty")
    processing = LogitsProcessing(
        message.presence_penalty, message.frequency_penalty, message.repetition_penalty or 1.0,
        tuple(sorted(message.logit_bias.items())), message.min_tokens, tuple(message.min_tokens_stop_ids))
    return processing, message.prompt_len
