"""The options of ``generate`` / ``stream`` (one definition for both clients) and the
``GenerateRequest`` they build.

``request_options`` is the one place the options are declared, documented and checked:
``takes_request_options`` gives a client method its signature, so ``Client`` and ``AsyncClient``
take the same keyword-only parameters without repeating them, an IDE shows them (``ParamSpec``),
and a misspelt keyword is a ``TypeError`` naming it. They mirror ``SamplingParams`` of
inference.proto; an option left at None stays absent on the wire, so the server applies its own
default (``max_tokens``: 64; ``draft_temperature``: the request's temperature).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Concatenate, ParamSpec, TypeVar

from saguaro.errors import InvalidRequestError
from saguaro.structured_output import StructuredOutput, to_proto
from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import MODE_TO_PROTO

MODES = {None: pb.DECODE_MODE_DEFAULT, **MODE_TO_PROTO}  # a request's mode; None: the server's


@dataclass(frozen=True)
class PreparedRequest:
    """A call's request and what the stream needs besides it."""

    request: pb.GenerateRequest
    prompt_ids: list[int]  # the prompt as sent (empty for text): results carry it
    n: int  # choices
    timeout: float | None  # seconds for the whole call; None: the client's


def request_options(
    prompt: str | list[int],
    *,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop_token_ids: list[int] | tuple[int, ...] = (),
    ignore_eos: bool = False,
    draft_temperature: float | None = None,
    stop: str | list[str] | tuple[str, ...] = (),
    include_stop_str_in_output: bool = False,
    logprobs: int | None = None,
    prompt_logprobs: int | None = None,
    presence_penalty: float | None = None,
    frequency_penalty: float | None = None,
    repetition_penalty: float | None = None,
    min_p: float | None = None,
    min_tokens: int | None = None,
    logit_bias: dict[int, float] | None = None,
    structured_output: StructuredOutput | None = None,
    n: int = 1,
    mode: str | None = None,
    request_id: str = "",
    stream_tokens_individually: bool = False,
    timeout: float | None = None,
) -> PreparedRequest:
    """Options of a Generate call (inference.proto ``SamplingParams`` and ``GenerateRequest``):

    * ``prompt``: text (encoded by the server, without special tokens) or token ids.
    * ``max_tokens``: most completion tokens; None: the server's default (64).
    * ``temperature``: 0 (the default) is greedy; ``top_p`` (1: off), ``top_k`` (0: off).
    * ``seed``: fixes the target's sampling randomness (choice j of ``n`` samples with seed + j).
    * ``stop_token_ids``: tokens that end generation; ``ignore_eos``: do not stop at EOS.
    * ``draft_temperature``: what the draft proposes with (speed only; None: ``temperature``).
    * ``stop``: a stop string or several (the text is cut before it; after it with
      ``include_stop_str_in_output``); needs a server with a tokenizer.
    * ``logprobs``: each token's log probability and this many alternatives (0 to 20);
      ``prompt_logprobs``: the prompt tokens' (docs/protocol.md "Log probabilities").
    * ``presence_penalty``, ``frequency_penalty`` (in [-2, 2]), ``repetition_penalty`` (> 0),
      ``min_p`` (in [0, 1]), ``min_tokens``, ``logit_bias`` (token id -> bias in [-100, 100]):
      vLLM's logits processors, exact under speculation; None: off (docs/protocol.md).
    * ``structured_output``: a grammar the output follows (``StructuredOutput.json_schema(...)``,
      ``.regex``, ``.choice``, ``.grammar``, ``.json_object``), exact under speculation.
    * ``n``: choices, 1 to 16 (a gateway serves n > 1; a target refuses it): ``generate`` then
      returns a list of n results, and stream deltas carry their choice's ``index``.
    * ``mode``: "ar" opts out of speculation; "sd", "ssd" (the server's own); None: the server's.
    * ``request_id``: for ``abort`` and tracing ("": the server assigns one).
    * ``stream_tokens_individually``: one delta per token instead of one per decode round.
    * ``timeout``: seconds for the whole call (retries and resumes included); None: the client's.

    Values a protobuf field cannot hold, an unknown ``mode`` or ``n`` < 1 raise
    ``InvalidRequestError``; the server checks the rest (``InvalidArgumentError`` naming the field).
    """
    if mode not in MODES:
        raise InvalidRequestError(f"mode must be one of ar, sd, ssd (or None for the server's), got {mode!r}")
    if n < 1:
        raise InvalidRequestError(f"n must be at least 1, got {n}")
    try:
        sampling = pb.SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k,
                                     stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos,
                                     stop=[stop] if isinstance(stop, str) else list(stop),
                                     include_stop_str_in_output=include_stop_str_in_output)
        sampling.logit_bias.update(logit_bias or {})
        optional = {"max_tokens": max_tokens, "seed": seed, "draft_temperature": draft_temperature,
                    "logprobs": logprobs, "prompt_logprobs": prompt_logprobs, "presence_penalty": presence_penalty,
                    "frequency_penalty": frequency_penalty, "repetition_penalty": repetition_penalty,
                    "min_p": min_p, "min_tokens": min_tokens}
        for name, value in optional.items():  # None stays absent: the server's default
            if value is not None:
                setattr(sampling, name, value)
        if structured_output is not None:  # the output follows this grammar (docs/protocol.md)
            sampling.structured_output.CopyFrom(to_proto(structured_output))
        request = pb.GenerateRequest(request_id=request_id, sampling=sampling, decode_mode=MODES[mode],
                                     stream_tokens_individually=stream_tokens_individually, n=n if n > 1 else 0)
        if isinstance(prompt, str):
            request.prompt_text = prompt
            return PreparedRequest(request, [], n, timeout)
        prompt_ids = [int(t) for t in prompt]
        request.prompt_token_ids.ids.extend(prompt_ids)
    except (ValueError, TypeError) as exc:  # e.g. a value out of range for its protobuf field
        raise InvalidRequestError(f"invalid request: {exc}") from None
    return PreparedRequest(request, prompt_ids, n, timeout)


Options = ParamSpec("Options")
ClientT = TypeVar("ClientT")
ResultT = TypeVar("ResultT")


def _with_options(build: Callable[Options, PreparedRequest]):
    """A decorator giving a client method ``(self, PreparedRequest)`` the parameters of ``build``
    (typed through ``ParamSpec``, and in its runtime signature and docstring for ``help`` and IDEs);
    the method gets what ``build`` makes of them."""

    def decorate(method: Callable[[ClientT, PreparedRequest], ResultT],
                 ) -> Callable[Concatenate[ClientT, Options], ResultT]:
        if inspect.iscoroutinefunction(method):
            @functools.wraps(method)
            async def call(self, *args, **kwargs):
                return await method(self, build(*args, **kwargs))
        else:
            @functools.wraps(method)
            def call(self, *args, **kwargs):
                return method(self, build(*args, **kwargs))
        options = inspect.signature(build)
        self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        call.__signature__ = options.replace(parameters=[self_parameter, *options.parameters.values()],
                                             return_annotation=inspect.signature(method).return_annotation)
        call.__doc__ = f"{inspect.getdoc(method)}\n\n{inspect.getdoc(build)}"
        return call

    return decorate


takes_request_options = _with_options(request_options)
