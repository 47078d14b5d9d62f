"""The autoregressive engine: scheduler + model runner + sampler, one step at a time.

Speculative modes reuse the same pieces (the runner's causal forward for verify, the block
manager's lookahead reservation and rollback); this module is the plain decoding loop and the
request bookkeeping every mode shares.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Collection
from functools import cached_property
from pathlib import Path

import torch

from saguaro.config import EngineConfig
from saguaro.errors import InvalidRequestError
from saguaro.grammar import GrammarCompiler
from saguaro.logits_processors import resolve
from saguaro.logprobs import TokenLogprob, token_logprobs
from saguaro.model_runner import CausalChunk, ModelRunner
from saguaro.request_rules import check_token_ids, fits_context, prompt_leaves_room
from saguaro.sampling import SamplingParams, make_generator, sample
from saguaro.scheduler import ScheduledBatch, Scheduler
from saguaro.sequence import FinishReason, Sequence
from saguaro.stop_strings import StopText
from saguaro.tokenizer import load_tokenizer


def stop_token_ids(model_dir: Path, config_eos: tuple[int, ...]) -> frozenset[int]:
    """EOS ids from config.json and generation_config.json (either may list several)."""
    ids = set(config_eos)
    gen = model_dir / "generation_config.json"
    if gen.is_file():
        eos = json.loads(gen.read_text()).get("eos_token_id")
        ids |= set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
    return frozenset(ids)


class RequestTracker:
    """Validation, stop conditions and finishing — the same for every decoding mode (the
    request rules themselves: ``saguaro.request_rules``)."""

    def __init__(self, runner: ModelRunner, scheduler: Scheduler, seed: int):
        self.runner = runner
        self.scheduler = scheduler
        self.eos_ids = stop_token_ids(runner.model_dir, runner.model_config.eos_token_ids)
        self.ids = itertools.count()
        self.rng = torch.Generator().manual_seed(seed)

    def new_sequence(self, prompt_token_ids: list[int], params: SamplingParams,
                     output_token_ids: Collection[int] = ()) -> Sequence:
        """``output_token_ids``: completion tokens a resumed request already produced elsewhere
        (a migrated stream); decoding continues after them, and when they already end the
        request the sequence comes back finished without being scheduled."""
        params.validate()
        if not prompt_token_ids:
            raise InvalidRequestError("the prompt is empty; give at least one token")
        check_token_ids("prompt token ids", prompt_token_ids, self.runner.vocab_size)
        check_token_ids("resumed token ids", output_token_ids, self.runner.vocab_size)
        check_token_ids("logit_bias token ids", params.logit_bias, self.runner.vocab_size)
        limit = self.runner.max_model_len
        if not prompt_leaves_room(len(prompt_token_ids), limit):
            raise InvalidRequestError(
                f"the prompt has {len(prompt_token_ids)} tokens but max_model_len is {limit}: "
                f"no room to generate; shorten the prompt to at most {limit - 1} tokens"
            )
        tokens = [*prompt_token_ids, *output_token_ids]
        if not fits_context(len(tokens), limit):
            raise InvalidRequestError(f"the prompt and the resumed tokens are {len(tokens)} tokens but max_model_len "
                                      f"is {limit}")
        gen = None if params.greedy else make_generator(params.seed, self.rng)
        seq = Sequence(next(self.ids), tokens, len(prompt_token_ids), params, gen)
        seq.processing = resolve(params.presence_penalty, params.frequency_penalty, params.repetition_penalty,
                                 params.logit_bias, params.min_tokens,
                                 {t for t in self.eos_ids | set(params.stop_token_ids) if 0 <= t < self.runner.vocab_size})
        if params.structured_output is not None:
            seq.grammar = self.grammars.matcher(params.structured_output)
            if not seq.grammar.follow(seq.output_token_ids):
                raise InvalidRequestError("the resumed token ids do not follow the request's structured_output")
        if params.logprobs is not None:
            seq.logprobs = [None] * len(output_token_ids)  # resumed tokens: scored by the server that sent them
        if params.stop:
            if self.tokenizer is None:
                raise InvalidRequestError("stop strings need the model's tokenizer, and this model folder has no "
                                          "tokenizer.json: use stop_token_ids")
            seq.stop_text = StopText(self.tokenizer, params.stop, params.include_stop_str_in_output, output_token_ids)
        reason = self._stop_reason(seq, tokens[-1]) if output_token_ids else None
        if reason is not None:
            self.finish(seq, reason)  # never scheduled: it holds no blocks
        else:
            self.scheduler.add(seq)
        return seq

    @cached_property
    def tokenizer(self):
        """The model's tokenizer, for stop strings: loaded by the first request that has some, an
        instance of the engine's own (a fast tokenizer is not thread safe)."""
        return load_tokenizer(self.runner.model_dir)

    @cached_property
    def grammars(self) -> GrammarCompiler:
        """The model's grammars for structured output: built by the first request that has one."""
        return GrammarCompiler(self.tokenizer, self.runner.vocab_size, self.eos_ids)

    def _stop_reason(self, seq: Sequence, token: int) -> FinishReason | None:
        """Why ``seq`` ends with its newest token ``token``; None: it goes on."""
        params = seq.params
        if (token in self.eos_ids and not params.ignore_eos) or token in params.stop_token_ids:
            return FinishReason.STOP
        if token in self.eos_ids and seq.grammar is not None:  # the grammar allows EOS only where its output is whole
            return FinishReason.STOP
        if seq.stop_string is not None:
            return FinishReason.STOP
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.runner.max_model_len:
            return FinishReason.LENGTH
        return None

    def append(self, seq: Sequence, tokens: list[int], logprobs: list[TokenLogprob] | None = None) -> None:
        """Commit output tokens (with their log probabilities, for a request that asked), cut
        at the first stop condition, finish if one was met.

        The check runs token by token, so a round that commits several tokens stops at the one
        that completes a stop string, exactly where AR decoding stops."""
        if seq.first_token_time is None:
            seq.first_token_time = time.perf_counter()
        for i, token in enumerate(tokens):
            seq.token_ids.append(token)
            if seq.logprobs is not None:
                seq.logprobs.append(logprobs[i])
            if seq.stop_text is not None:
                seq.stop_text.push(token, armed=seq.num_output_tokens >= seq.params.min_tokens)
            reason = self._stop_reason(seq, token)
            if reason is not None:
                self.finish(seq, reason)
                return

    def finish(self, seq: Sequence, reason: FinishReason) -> None:
        seq.finish_reason = reason
        seq.finish_time = time.perf_counter()
        self.scheduler.finish(seq)


class LLMEngine:
    """Plain autoregressive decoding with continuous batching."""

    def __init__(self, config: EngineConfig, lookahead: int = 0):
        """``lookahead``: KV slots a decode step may write past the newest token (K for SD/SSD)."""
        self.config = config
        self.runner = ModelRunner(config, lookahead_slots=lookahead, extra_positions=lookahead + 1)
        self.scheduler = Scheduler(self.runner.blocks, config.max_num_seqs, config.max_num_batched_tokens, lookahead)
        self.requests = RequestTracker(self.runner, self.scheduler, config.seed)

    def add_request(self, prompt_token_ids: list[int], params: SamplingParams,
                    output_token_ids: Collection[int] = ()) -> Sequence:
        """Queue a request; ``output_token_ids`` resumes one (see ``RequestTracker.new_sequence``)."""
        return self.requests.new_sequence(prompt_token_ids, params, output_token_ids)

    def request_stats(self, seq: Sequence) -> dict:
        """Mode-specific statistics reported with a finished request."""
        return {}

    def abort(self, seq: Sequence) -> None:
        if not seq.finished:
            self.requests.finish(seq, FinishReason.ABORT)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> ScheduledBatch | None:
        """Run one prefill or decode batch; return what was scheduled (None: nothing was), so
        the caller knows which sequences advanced and whether the step was a prefill."""
        batch = self.scheduler.schedule()
        if batch is None:
            return None
        if batch.is_prefill:
            self._prefill(batch.sequences)
        else:
            self._decode(batch.sequences)
        return batch

    def _prefill(self, seqs: list[Sequence]) -> None:
        chunks = [CausalChunk(s.table.blocks, s.num_computed, s.token_ids[s.num_computed :]) for s in seqs]
        self._step_and_commit(seqs, chunks)

    def _decode(self, seqs: list[Sequence]) -> None:
        chunks = [CausalChunk(s.table.blocks, s.num_tokens - 1, s.token_ids[-1:]) for s in seqs]
        self._step_and_commit(seqs, chunks)

    def _step_and_commit(self, seqs: list[Sequence], chunks: list[CausalChunk]) -> None:
        """One device step (forward and sampling), then one new token per sequence committed.

        Every row's logits are kept only when a prefill scores a prompt (``prompt_logprobs``)."""
        scoring = any(s.scores_prompt for s in seqs)
        with self.runner.device_step():
            logits = self.runner.run_causal(chunks, all_logits=scoring)
            if scoring:
                ends = torch.cumsum(torch.tensor([len(c.token_ids) for c in chunks]), 0)
                for seq, end in zip(seqs, ends.tolist()):
                    if seq.scores_prompt:  # its chunk is the whole sequence (the scheduler reused no block)
                        rows = logits[end - len(seq.token_ids): end - len(seq.token_ids) + seq.num_prompt_tokens - 1]
                        prompt = seq.token_ids[1:seq.num_prompt_tokens]
                        seq.prompt_logprobs = token_logprobs(rows, prompt, seq.params.prompt_logprobs)
                logits = logits[ends - 1]
            tokens = sample(logits, [s.params for s in seqs], [s.generator for s in seqs], [s.history for s in seqs]).tolist()
        for i, (seq, token) in enumerate(zip(seqs, tokens)):
            self.commit(seq, seq.num_tokens, [token], scored(seq, logits[i:i + 1], [token]))

    def commit(self, seq: Sequence, num_computed: int, new_tokens: list[int],
               logprobs: list[TokenLogprob] | None = None) -> None:
        """Record that KV is valid for ``num_computed`` tokens and append the new tokens (with
        their log probabilities, for a request that asked)."""
        seq.num_computed = num_computed
        self.runner.blocks.register_computed(seq.table, seq.token_ids, num_computed)
        self.requests.append(seq, new_tokens, logprobs)


def scored(seq: Sequence, rows: torch.Tensor, tokens: list[int]) -> list[TokenLogprob] | None:
    """The log probabilities of ``tokens`` (row i scores token i) if ``seq`` asked for them;
    None (nothing computed) otherwise."""
    return token_logprobs(rows, tokens, seq.params.logprobs) if seq.params.logprobs is not None else None
