"""A ``GenerateRequest`` from the keyword options of ``generate`` / ``stream``.

The options mirror ``SamplingParams`` of inference.proto; an option left at None stays absent
on the wire, so the server applies its own default (``max_tokens``: 64; ``draft_temperature``:
the request's temperature).
"""

from __future__ import annotations

from saguaro.errors import InvalidRequestError
from saguaro.structured_output import StructuredOutput, to_proto
from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import MODE_TO_PROTO

MODES = {None: pb.DECODE_MODE_DEFAULT, **MODE_TO_PROTO}  # a request's mode; None: the server's


def generate_request(
    prompt: str | list[int],
    *,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop_token_ids: list[int] | tuple[int, ...] = (),
    stop: str | list[str] | tuple[str, ...] = (),
    include_stop_str_in_output: bool = False,
    ignore_eos: bool = False,
    draft_temperature: float | None = None,
    mode: str | None = None,
    request_id: str = "",
    stream_tokens_individually: bool = False,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    repetition_penalty: float | None = None,
    min_p: float | None = None,
    min_tokens: int | None = None,
    logit_bias: dict[int, float] | None = None,
    structured_output: StructuredOutput | None = None,
) -> tuple[pb.GenerateRequest, list[int]]:
    """The GenerateRequest of ``Client.stream``'s options, and the prompt ids (empty for text)."""
    if mode not in MODES:
        raise InvalidRequestError(f"mode must be one of ar, sd, ssd (or None for the server's), got {mode!r}")
    try:
        sampling = pb.SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k,
                                     stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos,
                                     stop=[stop] if isinstance(stop, str) else list(stop),
                                     include_stop_str_in_output=include_stop_str_in_output)
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        if seed is not None:
            sampling.seed = seed
        if draft_temperature is not None:
            sampling.draft_temperature = draft_temperature
        if logprobs is not None:  # each delta's TokenDelta.logprobs (inference.proto)
            sampling.logprobs = logprobs
        if prompt_logprobs is not None:  # the first delta's TokenDelta.prompt_logprobs
            sampling.prompt_logprobs = prompt_logprobs
        # vLLM's logits processors (docs/protocol.md "Logits processors"); None: off
        for name, value in (("presence_penalty", presence_penalty), ("frequency_penalty", frequency_penalty),
                            ("repetition_penalty", repetition_penalty), ("min_p", min_p), ("min_tokens", min_tokens)):
            if value is not None:
                setattr(sampling, name, value)
        sampling.logit_bias.update(logit_bias or {})
        if structured_output is not None:  # the output follows this grammar (docs/protocol.md)
            sampling.structured_output.CopyFrom(to_proto(structured_output))
        request = pb.GenerateRequest(request_id=request_id, sampling=sampling, decode_mode=MODES[mode],
                                     stream_tokens_individually=stream_tokens_individually)
        if isinstance(prompt, str):
            request.prompt_text = prompt
            return request, []
        prompt_ids = [int(t) for t in prompt]
        request.prompt_token_ids.ids.extend(prompt_ids)
    except (ValueError, TypeError) as exc:  # e.g. a value out of range for its protobuf field
        raise InvalidRequestError(f"invalid request: {exc}") from None
    return request, prompt_ids
