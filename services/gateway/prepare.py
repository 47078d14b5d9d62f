"""Validate a request and turn it into a ``Dispatch`` (shared by the gRPC and HTTP fronts).

The gateway checks what it can before choosing a target, so a bad request costs no target
time and every refusal names the field: the prompt (present, non-empty, token ids inside the
vocabulary, shorter than the context), the tokens of a resumed request (``resume``) and the
sampling values. The prompt is tokenised here (routing needs token ids) and sent upstream as
token ids, which also makes every request migratable (``migration.py``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import grpc

from saguaro.errors import InvalidRequestError
from saguaro.request_rules import (MAX_LOGPROBS, check_stop_strings, check_token_ids, fits_context, prompt_leaves_room,
                                   top_p_from_proto, valid_logprobs, valid_temperature, valid_top_p)
from saguaro.services.gateway.dispatch import Dispatch, routing_hashes
from saguaro.services.gateway.errors import GatewayError, invalid
from saguaro.services.gateway.generation_defaults import GenerationDefaults
from saguaro.services.gateway.migration import resumed_prompt
from saguaro.services.gateway.telemetry import GatewaySpan
from saguaro.services.gateway.tokenization import GatewayTokenizer
from saguaro.v1 import inference_pb2 as pb
from saguaro.wire import PROTO_TO_MODE

MAX_REQUEST_ID_CHARS = 256
TEXT_SLACK = 4  # the byte limit on text allows this many times the bytes a full context can hold
JSON_SLACK = 6  # a JSON string may escape every character as \uXXXX: six bytes for one


@dataclass(frozen=True)
class ModelFacts:
    """What validation needs from the targets' ModelInfo."""

    name: str  # the name responses carry (the first --served-model-name)
    max_model_len: int
    vocab_size: int
    aliases: tuple[str, ...] = ()  # further names requests may use (the other --served-model-name)
    decode_mode: int = pb.DECODE_MODE_DEFAULT  # the targets' own mode (DEFAULT: not known)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def check_model(self, model: str) -> None:
        """404 for a name the gateway does not serve, in vLLM's words (its clients match them)."""
        if model not in self.names:
            raise GatewayError(grpc.StatusCode.NOT_FOUND, f"The model `{str(model)[:200]}` does not exist "
                               f"(this gateway serves {', '.join(map(repr, self.names))})", "model")


@dataclass(eq=False)
class Preparer:
    """Checks requests against the model's facts and turns them into ``Dispatch``es."""

    facts: ModelFacts
    tokenizer: GatewayTokenizer
    block_size: int
    max_prefix_blocks: int
    defaults: GenerationDefaults = field(default_factory=GenerationDefaults)  # the OpenAI API's (generation_defaults.py)

    # -- bounds on the work before admission -------------------------------------------------
    @property
    def text_byte_limit(self) -> int:
        """Bytes of prompt text beyond which a prompt cannot fit the context: a full context of
        ``max_model_len`` tokens spans at most that many times the longest token, and the limit
        allows ``TEXT_SLACK`` times that (normalisers may drop characters)."""
        return self.facts.max_model_len * max(self.tokenizer.max_token_bytes, 1) * TEXT_SLACK

    @property
    def body_byte_limit(self) -> int:
        """Bytes of a (decompressed) HTTP body worth reading: one prompt at the text limit, every
        character escaped, and room for the other fields; a batch of prompts larger than that
        must be split."""
        return JSON_SLACK * self.text_byte_limit + (1 << 20)

    def check_text_size(self, texts: list[str], param: str) -> None:
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
        limit = self.text_byte_limit
        if size > limit:
            raise invalid(f"{param} is {size} bytes of text, more than the model's context of {self.facts.max_model_len} "
                          f"tokens can hold ({limit} bytes at most): shorten it", param)

    # -- prompt ------------------------------------------------------------------------------
    def prompt_from_text(self, text: str, param: str, add_special_tokens: bool = False) -> list[int]:
        """``text``'s token ids; ``add_special_tokens`` adds what the tokenizer adds by default
        (BOS for Llama 3): OpenAI completions ask for it, as vLLM's do; gRPC text prompts do not,
        as the targets encode theirs (docs/gateway.md)."""
        if not text:
            raise invalid(f"{param} is empty; give at least one token of text", param)
        self.check_text_size([text], param)
        ids = self.tokenizer.encode(text, param, add_special_tokens)
        if not ids:
            raise invalid(f"{param} encodes to no tokens; give some text", param)
        return ids

    def check_prompt_ids(self, ids: list[int], param: str) -> list[int]:
        if not ids:
            raise invalid(f"{param} is empty; give at least one token", param)
        check_vocabulary(f"{param}: token ids", ids, self.facts.vocab_size, param)
        limit = self.facts.max_model_len
        if not prompt_leaves_room(len(ids), limit):
            raise invalid(f"the prompt has {len(ids)} tokens but the model's context (max_model_len) is {limit}: "
                          f"shorten it to at most {limit - 1} tokens", param)
        return ids

    def prompt_from_proto(self, request: pb.GenerateRequest) -> list[int]:
        """The prompt's token ids; a resumed request's tokens (``resume``) are checked with it."""
        kind = request.WhichOneof("prompt")
        if kind is None:
            raise invalid("the request has no prompt: set prompt_text or prompt_token_ids", "prompt")
        if kind == "prompt_text":
            ids = self.check_prompt_ids(self.prompt_from_text(request.prompt_text, "prompt_text"), "prompt_text")
        else:
            ids = self.check_prompt_ids(list(request.prompt_token_ids.ids), "prompt_token_ids")
        if request.HasField("resume"):
            self.check_resume(request, len(ids))
        return ids

    def check_resume(self, request: pb.GenerateRequest, prompt_tokens: int) -> None:
        resumed = request.resume.token_ids
        limit = self.facts.max_model_len
        check_vocabulary("resume.token_ids: token ids", resumed, self.facts.vocab_size, "resume.token_ids")
        if not fits_context(prompt_tokens + len(resumed), limit):
            raise invalid(f"the prompt ({prompt_tokens} tokens) and resume.token_ids ({len(resumed)}) exceed the "
                          f"model's context (max_model_len {limit})", "resume.token_ids")
        sampling = request.sampling
        if sampling.HasField("max_tokens") and len(resumed) > sampling.max_tokens:
            raise invalid(f"resume.token_ids holds {len(resumed)} tokens, more than sampling.max_tokens "
                          f"({sampling.max_tokens}) allows", "resume.token_ids")

    # -- sampling ----------------------------------------------------------------------------
    def check_sampling(self, sampling: pb.SamplingParams, prefix: str = "") -> None:
        """The engine's rules (``saguaro.request_rules``: temperatures finite and >= 0, top_p in
        (0, 1] once the wire's 0 = off is read, the stop-string limits), and 1 <= max_tokens <= context."""
        if not valid_temperature(sampling.temperature):
            raise invalid(f"{prefix}temperature must be a finite number >= 0, got {sampling.temperature}",
                          f"{prefix}temperature")
        if not valid_top_p(top_p_from_proto(sampling.top_p)):
            raise invalid(f"{prefix}top_p must be in (0, 1] (0 also means off), got {sampling.top_p}", f"{prefix}top_p")
        if sampling.HasField("draft_temperature") and not valid_temperature(sampling.draft_temperature):
            raise invalid(f"{prefix}draft_temperature must be a finite number >= 0, got {sampling.draft_temperature}",
                          f"{prefix}draft_temperature")
        if sampling.HasField("max_tokens"):
            self.check_max_tokens(sampling.max_tokens, f"{prefix}max_tokens")
        for name in ("logprobs", "prompt_logprobs"):
            if sampling.HasField(name) and not valid_logprobs(getattr(sampling, name)):
                raise invalid(f"{prefix}{name} must be between 0 and {MAX_LOGPROBS}, got {getattr(sampling, name)}",
                              f"{prefix}{name}")
        try:
            check_stop_strings(sampling.stop)
        except InvalidRequestError as exc:
            raise invalid(str(exc), f"{prefix}stop") from None

    def check_mode(self, decode_mode: int, param: str) -> None:
        """A request may ask for AR or the targets' own mode (the target refuses another, but
        its refusal could not name the field)."""
        served = self.facts.decode_mode
        if decode_mode in (pb.DECODE_MODE_SD, pb.DECODE_MODE_SSD) and served not in (pb.DECODE_MODE_DEFAULT,
                                                                                    decode_mode):
            mode, own = PROTO_TO_MODE[decode_mode], PROTO_TO_MODE.get(served, "ar")
            raise invalid(f"{param}: this server decodes with mode {own!r}; a request may ask for "
                          f"{'ar' if own == 'ar' else 'ar or ' + repr(own)} or leave it unset, not {mode!r}", param)

    def check_max_tokens(self, value: int, param: str) -> None:
        limit = self.facts.max_model_len
        if not 1 <= value <= limit:
            raise invalid(f"{param} must be between 1 and {limit} (the model's context), got {value}", param)

    def check_request_id(self, request_id: str) -> None:
        """A client's id goes back in a header and on to the target in a protobuf string: it
        must be printable UTF-8 text (aiohttp hands a header's invalid bytes over as surrogates)."""
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise invalid(f"request_id is {len(request_id)} characters long; at most {MAX_REQUEST_ID_CHARS} are allowed",
                          "request_id")
        try:
            request_id.encode("utf-8")
            printable = request_id.isprintable()
        except UnicodeEncodeError:
            printable = False
        if not printable:
            raise invalid("request_id (the x-request-id header) must be printable text: UTF-8, no control characters",
                          "request_id")

    # -- dispatch ----------------------------------------------------------------------------
    def dispatch(self, request: pb.GenerateRequest, prompt_ids: list[int], timeout_s: float, api: str,
                 span: GatewaySpan, owner: str | None = None) -> Dispatch:
        """``request`` (already validated, with the client's request id) with the prompt as token
        ids and the id in ``owner``'s namespace (``scoped_request_id``); the target gets
        ``span``'s trace context."""
        client_id = request.request_id
        request.request_id = scoped_request_id(owner, client_id)
        if request.WhichOneof("prompt") != "prompt_token_ids":
            request.prompt_token_ids.CopyFrom(pb.TokenIds(ids=prompt_ids))  # replaces prompt_text (oneof)
        hashes = routing_hashes(resumed_prompt(request), self.block_size, self.max_prefix_blocks)
        return Dispatch(request=request, client_id=client_id, block_hashes=hashes,
                        deadline=time.monotonic() + timeout_s, api=api, metadata=span.forward_metadata(),
                        prompt_tokens=len(prompt_ids), span=span)


def check_vocabulary(what: str, ids: Iterable[int], vocab_size: int, param: str) -> None:
    """``saguaro.request_rules.check_token_ids`` as the gateway's refusal, naming ``param``."""
    try:
        check_token_ids(what, ids, vocab_size)
    except InvalidRequestError as exc:
        raise invalid(str(exc), param) from None


def scoped_request_id(owner: str | None, request_id: str) -> str:
    """The id the targets and the dispatcher see for a client's ``request_id``: with API keys, in
    the key's own namespace (a digest of the key, never the key), so that one tenant can neither
    abort another's request nor learn which ids another has live; without keys, the id itself."""
    if owner is None:
        return request_id
    return f"{hashlib.sha256(owner.encode()).hexdigest()[:16]}/{request_id}"
