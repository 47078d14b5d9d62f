"""The offline Python API: ``LLM(model_dir).generate(prompts, SamplingParams(...))``."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import asdict, dataclass, field
from typing import Any

from tqdm.auto import tqdm

from saguaro.config import EngineConfig
from saguaro.engine import LLMEngine
from saguaro.errors import InvalidRequestError
from saguaro.logprobs import TokenLogprob
from saguaro.sampling import SamplingParams
from saguaro.sequence import Sequence
from saguaro.tokenizer import decode, encode, load_tokenizer


@dataclass
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str
    stop_string: str | None = None  # the stop string that ended the request, as GenerateFinal.stop_string
    timings: dict[str, float] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    # With SamplingParams.logprobs: one per output token; with prompt_logprobs: prompt tokens 2..P
    # (saguaro/logprobs.py). None when not asked.
    logprobs: list[TokenLogprob | None] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def request_output(seq: Sequence, tokenizer, stats: dict[str, Any] | None = None) -> RequestOutput:
    end = seq.finish_time or seq.arrival_time
    ttft = (seq.first_token_time or end) - seq.arrival_time
    total = end - seq.arrival_time
    decode_time = end - (seq.first_token_time or end)
    n = seq.num_output_tokens
    text = decode(tokenizer, seq.output_token_ids)
    return RequestOutput(
        request_id=seq.seq_id,
        prompt_token_ids=seq.token_ids[: seq.num_prompt_tokens],
        token_ids=seq.output_token_ids,
        text=text if seq.stop_text is None else seq.stop_text.output_text(text),
        finish_reason=seq.finish_reason.value if seq.finish_reason else "",
        stop_string=seq.stop_string,
        timings={
            "time_to_first_token_s": ttft,
            "total_s": total,
            "decode_tokens_per_s": (n - 1) / decode_time if n > 1 and decode_time > 0 else 0.0,
        },
        stats={"num_preemptions": seq.num_preemptions, **(stats or {})},
        logprobs=seq.logprobs,
        prompt_logprobs=seq.prompt_logprobs,
    )


class LLM:
    """Load a model folder once, then generate for batches of prompts (text or token ids)."""

    def __init__(self, model: str, **engine_options: Any):
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))
        self.tokenizer = load_tokenizer(model)

    @classmethod
    def from_engine(cls, engine: LLMEngine, tokenizer) -> "LLM":
        """Wrap an already built engine (e.g. a speculative one) in the same API."""
        llm = cls.__new__(cls)
        llm.engine, llm.tokenizer = engine, tokenizer
        return llm

    def generate(
        self,
        prompts: str | list[int] | Seq[str | list[int]],
        params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        batch = [prompts] if isinstance(prompts, str) or _is_token_list(prompts) else list(prompts)
        if not batch:
            raise InvalidRequestError("no prompts given")
        params_list = _broadcast(params, len(batch))
        seqs = [
            self.engine.add_request(p if isinstance(p, list) else encode(self.tokenizer, p), sp)
            for p, sp in zip(batch, params_list)
        ]
        with tqdm(total=len(seqs), desc="generating", disable=not use_tqdm) as bar:
            done = 0
            while self.engine.has_work():
                self.engine.step()
                finished = sum(s.finished for s in seqs)
                bar.update(finished - done)
                done = finished
        return [request_output(s, self.tokenizer, self.engine.request_stats(s)) for s in seqs]


def _is_token_list(value: object) -> bool:
    return isinstance(value, list) and (not value or isinstance(value[0], int))


def _broadcast(params: SamplingParams | Seq[SamplingParams] | None, n: int) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams() for _ in range(n)]
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise InvalidRequestError(f"got {len(params)} SamplingParams for {n} prompts")
    return params
