"""The target's public ``Inference`` gRPC API and the conversion between its messages and the engine's.

Handlers run on gRPC worker threads and never touch the engine: they validate and convert a
request, submit it to the ``EngineLoop`` and turn the loop's deltas into ``GenerateResponse``
messages (with incremental text when the model has a tokenizer).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from pathlib import Path

import grpc

from saguaro import structured_output
from saguaro.detokenizer import IncrementalDetokenizer
from saguaro.errors import InvalidRequestError
from saguaro.logprobs import TokenLogprob
from saguaro.request_rules import top_p_from_proto
from saguaro.resume import ReceivedOutput
from saguaro.sampling import DEFAULT_MAX_TOKENS, SamplingParams
from saguaro.stop_strings import StopStringMatcher
from saguaro.services.target.health import target_health
from saguaro.services.target.loop import EngineLoop, Final, LoopStopped
from saguaro.services.target.request_telemetry import RequestRecord, RequestTelemetry
from saguaro.services.target.request_telemetry import error_type as request_error_type
from saguaro.tokenizer import encode
from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import inference_pb2_grpc as pb_grpc
from saguaro.wire import DTYPE_NAMES, FINISH_TO_PROTO, MODE_TO_PROTO, PROTO_TO_MODE, speculation_to_proto

RETRY_AFTER_S = 1  # sent with a Generate refused for want of a stream slot


def sampling_from_proto(sampling: pb.SamplingParams, decode_mode: int, server_mode: str) -> SamplingParams:
    """The request's sampling parameters; raises ``InvalidRequestError`` with the reason."""
    if not math.isfinite(sampling.temperature):
        raise InvalidRequestError(f"temperature must be a finite number >= 0, got {sampling.temperature}")
    if decode_mode != pb.DECODE_MODE_DEFAULT and decode_mode not in PROTO_TO_MODE:
        raise InvalidRequestError(f"unknown decode_mode {decode_mode}; use DECODE_MODE_DEFAULT (0), DECODE_MODE_AR (1), "
                                  f"DECODE_MODE_SD (2) or DECODE_MODE_SSD (3)")
    mode = PROTO_TO_MODE.get(decode_mode)  # None: DECODE_MODE_DEFAULT, the server's mode
    if mode in ("sd", "ssd") and mode != server_mode:
        raise InvalidRequestError(
            f"this server decodes with mode {server_mode!r}; a request may ask for DECODE_MODE_DEFAULT, "
            f"DECODE_MODE_AR{'' if server_mode == 'ar' else ' or DECODE_MODE_' + server_mode.upper()} "
            f"(got DECODE_MODE_{mode.upper()})"
        )
    params = SamplingParams(
        max_tokens=sampling.max_tokens if sampling.HasField("max_tokens") else DEFAULT_MAX_TOKENS,
        temperature=sampling.temperature,
        top_p=top_p_from_proto(sampling.top_p),
        top_k=sampling.top_k,
        seed=sampling.seed if sampling.HasField("seed") else None,
        stop_token_ids=list(sampling.stop_token_ids),
        stop=list(sampling.stop),
        include_stop_str_in_output=sampling.include_stop_str_in_output,
        ignore_eos=sampling.ignore_eos,
        mode="ar" if mode == "ar" else None,
        draft_temperature=sampling.draft_temperature if sampling.HasField("draft_temperature") else None,
        logprobs=sampling.logprobs if sampling.HasField("logprobs") else None,
        prompt_logprobs=sampling.prompt_logprobs if sampling.HasField("prompt_logprobs") else None,
        presence_penalty=sampling.presence_penalty,
        frequency_penalty=sampling.frequency_penalty,
        repetition_penalty=sampling.repetition_penalty if sampling.HasField("repetition_penalty") else 1.0,
        min_p=sampling.min_p,
        min_tokens=sampling.min_tokens,
        logit_bias=dict(sampling.logit_bias),
        structured_output=structured_output.from_proto(sampling.structured_output),
    )
    params.validate()
    return params


def check_one_choice(request: pb.GenerateRequest) -> None:
    """A target decodes one completion per request: choices (``n``) are the gateway's, which
    spreads them over its targets and shares the prompt's KV (docs/gateway.md "Several choices")."""
    if request.n > 1:
        raise InvalidRequestError(f"n must be 0 or 1 at a target (got n={request.n}): a target serves one choice "
                                  "per request; send n > 1 to a gateway, or n requests")


def prompt_from_proto(request: pb.GenerateRequest, tokenizer) -> list[int]:
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise InvalidRequestError("the request has no prompt: set prompt_text or prompt_token_ids")
    if kind == "prompt_token_ids":
        return list(request.prompt_token_ids.ids)
    if tokenizer is None:
        raise InvalidRequestError("this server's model has no tokenizer: send prompt_token_ids instead of prompt_text")
    return encode(tokenizer, request.prompt_text)


def logprobs_to_proto(scored: list[TokenLogprob]) -> list[pb.TokenLogprob]:
    return [pb.TokenLogprob(token_id=s.token_id, logprob=s.logprob, top_token_ids=s.top_ids, top_logprobs=s.top_logprobs)
            for s in scored]


def final_to_proto(final: Final) -> pb.GenerateFinal:
    out = pb.GenerateFinal(
        finish_reason=FINISH_TO_PROTO[final.finish_reason],
        error_message=final.error_message,
        usage=pb.Usage(prompt_tokens=final.prompt_tokens, completion_tokens=final.completion_tokens,
                       total_tokens=final.prompt_tokens + final.completion_tokens,
                       cached_prompt_tokens=final.cached_prompt_tokens),
        timings=pb.Timings(**final.timings),
        speculation=speculation_to_proto(final.stats),
    )
    if final.stop_token_id is not None:
        out.stop_token_id = final.stop_token_id
    if final.stop_string is not None:
        out.stop_string = final.stop_string
    return out


class InferenceService(pb_grpc.InferenceServicer):
    """The public ``Inference`` API of one target: requests in, token and text deltas out."""

    def __init__(self, loop: EngineLoop, tokenizer=None, draft_model_name: str = "",
                 telemetry: RequestTelemetry | None = None, max_streams: int = 32):
        """``max_streams``: Generate streams served at once (each holds a worker thread); more
        are refused with RESOURCE_EXHAUSTED and ``retry-after``, while Health and the other
        unary calls keep threads of their own (``serve_target``)."""
        self.loop = loop
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)
        self.engine = loop.engine
        self.tokenizer = tokenizer
        self.draft_model_name = draft_model_name
        self.mode = self.engine.mode
        # A fast tokenizer is not safe to call from several threads at once ("Already borrowed").
        self._tokenizer_lock = threading.Lock()
        # Request span, request metrics, the per-request log line (saguaro.services.target.request_telemetry).
        self.telemetry = telemetry or RequestTelemetry(self.engine.runner.model_dir.name)

    def Generate(self, request: pb.GenerateRequest, context):
        if not self._streams.acquire(blocking=False):
            context.set_trailing_metadata((("retry-after", str(RETRY_AFTER_S)),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"this target serves {self.max_streams} streams at once; retry in {RETRY_AFTER_S} s")
        try:
            record = self.telemetry.start(request.request_id or uuid.uuid4().hex, context.invocation_metadata(),
                                          time.perf_counter())
            try:
                yield from self._generate(request, context, record)
            except BaseException as exc:  # refused, cancelled by the client (GeneratorExit), a bug
                record.fail(request_error_type(exc, context))
                raise
        finally:
            self._streams.release()

    def _generate(self, request: pb.GenerateRequest, context, record: RequestRecord):
        arrival, request_id = record.arrival, record.request_id
        received = ReceivedOutput.of_request(request)  # a resumed stream continues after it
        try:
            check_one_choice(request)
            with self._tokenizer_lock:
                prompt = prompt_from_proto(request, self.tokenizer)
            params = sampling_from_proto(request.sampling, request.decode_mode, self.mode)
            text = (IncrementalDetokenizer(self.tokenizer, self._tokenizer_lock, received.token_ids, received.text)
                    if self.tokenizer is not None else None)
            # The text the stream shows: cut at a stop string, never showing a possible one's start early.
            shown = StopStringMatcher(params.stop, params.include_stop_str_in_output) if params.stop else None
            handle = self.loop.submit(request_id, prompt, params, arrival, record.span_context, received.token_ids)
            record.admitted(len(prompt), params)
        except InvalidRequestError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except LoopStopped as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if not context.add_callback(lambda: self.loop.cancel(handle)):
            self.loop.cancel(handle)  # the client is already gone
        for event in handle.events():
            if isinstance(event, Final):
                record.finish(event)
                yield pb.GenerateResponse(request_id=request_id, final=final_to_proto(event))
                return
            record.delta(len(event.token_ids), event.time)
            pieces = [[t] for t in event.token_ids] if request.stream_tokens_individually else [event.token_ids]
            offset = event.offset
            for i, tokens in enumerate(pieces):
                delta = pb.TokenDelta(token_ids=tokens, offset=offset, round=event.round)
                if event.logprobs is not None:
                    start = offset - event.offset
                    delta.logprobs.extend(logprobs_to_proto(event.logprobs[start:start + len(tokens)]))
                if event.prompt_logprobs is not None and i == 0:
                    delta.prompt_logprobs.extend(logprobs_to_proto(event.prompt_logprobs))
                if text is not None:
                    last = event.last and i == len(pieces) - 1
                    delta.text = text.push(tokens, flush=last)
                    if shown is not None:
                        delta.text = shown.feed(delta.text, final=last)
                offset += len(tokens)
                yield pb.GenerateResponse(request_id=request_id, delta=delta)

    def Abort(self, request: pb.AbortRequest, context) -> pb.AbortResponse:
        try:
            return pb.AbortResponse(found=self.loop.abort(request.request_id))
        except LoopStopped:
            return pb.AbortResponse(found=False)

    def Health(self, request: pb.HealthRequest, context) -> pb.HealthResponse:
        health = target_health(self.loop)
        load = self.loop.load
        return pb.HealthResponse(
            status=health.status, draft_connected=health.draft_connected, mode=health.mode, message=health.message,
            num_running=load.num_running, num_waiting=load.num_waiting,
            kv_cache_usage=load.kv_cache_usage, max_num_seqs=self.engine.config.max_num_seqs,
            prefix_cache_queried_tokens=load.prefix_cache_queried_tokens,
            prefix_cache_hit_tokens=load.prefix_cache_hit_tokens)

    def ModelInfo(self, request: pb.ModelInfoRequest, context) -> pb.ModelInfoResponse:
        runner = self.engine.runner
        info = pb.ModelInfoResponse(
            model_name=runner.model_dir.name,
            architecture=runner.model_config.architecture,
            vocab_size=runner.vocab_size,
            max_model_len=runner.max_model_len,
            dtype=DTYPE_NAMES.get(str(runner.dtype), str(runner.dtype)),
            decode_mode=MODE_TO_PROTO[self.mode],
            has_tokenizer=self.tokenizer is not None,
            eos_token_ids=sorted(self.engine.requests.eos_ids),
            draft_model_name=self.draft_model_name if self.mode != "ar" else "",
            generation_config=_generation_config(runner.model_dir),
        )
        proposer = self.engine.proposer
        if proposer is not None:
            if proposer.draft_model is not None and proposer.draft_model.model_name:
                info.draft_model_name = proposer.draft_model.model_name
            info.lookahead_k = proposer.settings.k
            info.fan_out = proposer.settings.fan_out
            info.fan_out_list.extend(proposer.settings.fan_out_hit)
        return info


def _generation_config(model_dir: Path) -> str:
    """The folder's generation_config.json as it is, for gateways to take their sampling defaults
    from (docs/gateway.md "Sampling defaults"); empty when it has none."""
    path = Path(model_dir) / "generation_config.json"
    return path.read_text() if path.is_file() else ""
