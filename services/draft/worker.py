"""The draft worker: the draft model, its own KV cache, and the speculation cache.

Transport-agnostic: it consumes and produces ``saguaro.v1.speculation_pb2`` messages, so the
same object serves an in-process target, the gRPC stream and the torch.distributed fast path.

One round, from the draft's side (docs/speculation.md, "One round"):

1. ``speculate``: apply the tokens the target committed since it last spoke about each
   sequence, look the outcome key (seq_id, n, r) up in the speculation cache, fill misses with
   the backup (JIT: K draft steps now; fast: placeholder tokens), reply.
2. ``build`` (off the critical path, while the target verifies): glue forward over
   ``[r, s_1..s_K]``, fork the top-F_j tokens of glue row j (excluding s_{j+1} for j < K), run
   a K-step tree decode of the forks, and store each branch under its outcome key.

In synchronous SD mode (``build_cache=False``) only step 1 runs, always with JIT. Every draft
token of either step is drawn by ``ProposalSampler`` (``sampler.py``); what the worker keeps per
sequence and per answered row is in ``sequences.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import replace

import torch

from saguaro.attention.tree_attention import TreeStep, tree_attention
from saguaro import structured_output
from saguaro.config import EngineConfig
from saguaro.engine import stop_token_ids
from saguaro.errors import InvalidRequestError, ModelLoadError
from saguaro.grammar import GrammarCompiler, GrammarMatcher
from saguaro.model_runner import CausalChunk, ModelRunner
from saguaro.sampling import role_seed
from saguaro.services.draft.policy import RoundEconomics, TreeBudget
from saguaro.services.draft.sampler import ProposalSampler
from saguaro.services.draft.sequences import DraftSequence, PendingRow
from saguaro.services.draft.speculation_cache import CachedDraft, SpeculationCache
from saguaro.services.draft.telemetry import DraftRoundTrace, round_trace
from saguaro.services.draft.tree import TreeRound, tree_scratch_slots
from saguaro.logits_processors import NO_TOKEN, process_block
from saguaro.speculative import processing_codec, proposal_codec
from saguaro.speculative.fanout import placeholder_fan_out, scale_fan_out, select_fan_out, shorten_fan_out
from saguaro.speculative.fork import fork_candidates
from saguaro.speculative.settings import DraftSettings
from saguaro.telemetry.attributes import BACKUP_SPAN, FORK_SPAN, GLUE_SPAN, LOOKUP_SPAN, TREE_SPAN
from saguaro.tokenizer import load_tokenizer
from saguaro.v1 import inference_pb2
from saguaro.v1 import speculation_pb2 as pb

log = logging.getLogger(__name__)


class DraftWorker:
    def __init__(self, runner: ModelRunner, settings: DraftSettings, build_cache: bool = True):
        self.runner = runner
        self.settings = settings
        self.sampler = ProposalSampler(runner, settings)
        self.build_cache = build_cache
        self.sequences: dict[int, DraftSequence] = {}
        self.cache = SpeculationCache()
        self.pending: list[PendingRow] = []
        self.rng = torch.Generator().manual_seed(settings.seed)
        self.last_build_us = 0
        self.last_build_branches = 0
        self._idle_since = time.perf_counter()
        self._replied_at: float | None = None
        self.economics = RoundEconomics(settings.k, settings.budget)
        self.tree_budget = TreeBudget(settings.budget)
        self._build_budget_s = 0.0  # the time the target gave the next build (its request's build_budget_us)
        self.fan_out_hit, self.fan_out_miss = list(settings.fan_out_hit), list(settings.fan_out_miss)
        self._trace: DraftRoundTrace | None = None  # span of the round answered last, until its build ends

    @property
    def k(self) -> int:
        return self.settings.k

    # -- dispatch -------------------------------------------------------------------------
    def handle(self, request: pb.SpeculationRequest) -> pb.SpeculationResponse:
        """Answer one request; malformed ones get an error reply and change nothing."""
        kind = request.WhichOneof("kind")
        try:
            if kind == "prefill":
                return pb.SpeculationResponse(round_id=request.round_id, prefill=self.prefill(request.prefill))
            if kind == "speculate":
                return pb.SpeculationResponse(round_id=request.round_id, speculate=self.speculate(request.speculate))
            if kind == "release":
                return pb.SpeculationResponse(round_id=request.round_id, release=self.release(request.release))
            raise ValueError("request carries no prefill, speculate or release")
        except ValueError as exc:
            self.pending = []
            self._close_trace(str(exc))
            error = pb.SpeculationError(code=pb.ERROR_CODE_INVALID_REQUEST, message=str(exc))
            return pb.SpeculationResponse(round_id=request.round_id, error=error)

    # -- prefill / release ----------------------------------------------------------------
    def prefill(self, request: pb.PrefillRequest) -> pb.PrefillReply:
        start = time.perf_counter()
        vocab = self.runner.vocab_size
        fresh: list[DraftSequence] = []
        rows = []
        limit = self.runner.max_model_len
        for item in request.sequences:  # refuse before changing anything
            tokens = item.prompt_token_ids
            if not tokens or min(tokens) < 0 or max(tokens) >= vocab:
                raise ValueError(f"sequence {item.seq_id}: prompt is empty or has token ids outside [0, {vocab})")
            known = self.sequences.get(item.seq_id)
            total = len(tokens) + (0 if item.reset or known is None else len(known.tokens))
            if total > limit:
                raise ValueError(f"sequence {item.seq_id}: {total} tokens exceed the draft's context ({limit})")
            if item.HasField("processing"):
                processing_codec.from_proto(item.processing, vocab)
            if item.HasField("structured_output") and item.prompt_len > len(tokens):
                raise ValueError(f"sequence {item.seq_id}: prompt_len {item.prompt_len} exceeds its tokens")
        if len({item.seq_id for item in request.sequences}) != len(request.sequences):
            raise ValueError("a prefill request names a sequence more than once")
        for item in request.sequences:
            tokens = list(item.prompt_token_ids)
            seq = self.sequences.get(item.seq_id)
            if seq is None or item.reset:
                self._forget(item.seq_id)
                seed = role_seed(item.seed, "draft") if item.HasField("seed") else int(
                    torch.randint(0, 2**62, (1,), generator=self.rng))
                seq = DraftSequence(item.seq_id, tokens, torch.Generator().manual_seed(seed))
                if item.HasField("processing"):
                    seq.processing, seq.prompt_len = processing_codec.from_proto(item.processing, vocab)
                if item.HasField("structured_output"):
                    seq.grammar, seq.prompt_len = self._grammar(item.structured_output), item.prompt_len
                self.sequences[item.seq_id] = seq
            else:
                seq.tokens.extend(tokens)
            if self.runner.blocks.ensure_slots(seq.table, len(seq.tokens)):
                fresh.append(seq)
                status = pb.ROW_STATUS_OK
            else:
                status = pb.ROW_STATUS_OUT_OF_MEMORY
            rows.append(pb.PrefillRowReply(seq_id=item.seq_id, status=status, committed_len=len(seq.tokens)))
        if fresh:
            self._forward_catch_up(fresh)
        return pb.PrefillReply(rows=rows, prefill_us=int((time.perf_counter() - start) * 1e6))

    def _grammar(self, message: inference_pb2.StructuredOutput) -> GrammarMatcher | None:
        """The sequence's grammar matcher, so its proposals stay inside the grammar (None: a
        draft without a tokenizer, or a spec it cannot compile, proposes unmasked; the target's
        verify keeps the output exact either way: docs/speculation.md, "Structured output")."""
        spec = structured_output.from_proto(message)
        if spec is None or self.grammars is None:
            return None
        try:
            return self.grammars.matcher(spec)
        except InvalidRequestError as exc:
            log.warning("draft proposals unmasked: %s", exc)
            return None

    @functools.cached_property
    def grammars(self) -> GrammarCompiler | None:
        """This draft model's grammars, built by the first sequence with structured output (None:
        its folder has no usable tokenizer, and its proposals go unmasked)."""
        try:
            tokenizer = load_tokenizer(self.runner.model_dir)
            if tokenizer is None:
                return None
            eos = stop_token_ids(self.runner.model_dir, self.runner.model_config.eos_token_ids)
            return GrammarCompiler(tokenizer, self.runner.vocab_size, eos)
        except (ModelLoadError, ValueError) as exc:  # a broken or slow (non-fast) tokenizer
            log.warning("draft proposals unmasked: no grammar for this draft's tokenizer (%s)", exc)
            return None

    def _forward_catch_up(self, seqs: list[DraftSequence]) -> None:
        chunks = [CausalChunk(s.table.blocks, len(s.kv_tokens), s.tokens[len(s.kv_tokens) :]) for s in seqs]
        self.runner.run_causal(chunks)
        for s in seqs:
            s.kv_tokens = list(s.tokens)

    def release(self, request: pb.ReleaseRequest) -> pb.ReleaseReply:
        known = [sid for sid in request.seq_ids if sid in self.sequences]
        for sid in known:
            self._forget(sid)
        return pb.ReleaseReply(released=len(known))

    def _forget(self, seq_id: int) -> None:
        seq = self.sequences.pop(seq_id, None)
        if seq is not None:
            self.runner.blocks.free(seq.table)
        self.cache.drop(seq_id)

    # -- speculate ------------------------------------------------------------------------
    def speculate(self, request: pb.SpeculateRequest) -> pb.SpeculateReply:
        if request.lookahead > self.k:
            raise ValueError(f"lookahead {request.lookahead} exceeds the session's K = {self.k}")
        depth = request.lookahead or self.k
        arrived = time.perf_counter()
        idle_us = int((arrived - self._idle_since) * 1e6)
        self._close_trace()  # a traced round whose build never ran
        trace = self._trace = round_trace(request.trace_context, self.k) if request.trace_context else None
        if self._replied_at is not None:
            self.economics.observe_cycle(arrived - self._replied_at)
        replies: list[pb.SpeculateRowReply] = []
        pending: list[PendingRow] = []
        misses: list[tuple[int, PendingRow]] = []
        for row in request.rows:
            reply, plan = self._lookup(row, depth, request.synchronous)
            replies.append(reply)
            if plan is not None:
                pending.append(plan)
                if not plan.hit:
                    misses.append((len(replies) - 1, plan))
        lookup_done = time.perf_counter()
        if trace is not None:
            trace.mark(LOOKUP_SPAN)
        if misses:
            self._fill_misses(misses, replies, len(request.rows), jit=request.synchronous or None, k=depth)
        for plan in pending:
            plan.seq.depth = depth
        backup_us = int((time.perf_counter() - lookup_done) * 1e6)
        if trace is not None:
            trace.mark(BACKUP_SPAN if misses else None)
        self.pending = [] if request.synchronous else pending  # a synchronous round builds nothing
        self._build_budget_s = request.build_budget_us / 1e6
        self._replied_at = time.perf_counter()
        timings = pb.DraftTimings(
            lookup_us=int((lookup_done - arrived) * 1e6),
            backup_us=backup_us,
            prev_build_us=self.last_build_us,
            prev_build_branches=self.last_build_branches,
            idle_us=idle_us,
        )
        reply = pb.SpeculateReply(rows=replies, probs_dtype=self.settings.probs_dtype, timings=timings)
        if trace is not None:
            trace.replied(reply, len(request.rows))
        return reply

    def _lookup(self, row: pb.SpeculateRow, depth: int,
                synchronous: bool = False) -> tuple[pb.SpeculateRowReply, PendingRow | None]:
        """Sync the row and look its outcome key up for a proposal of ``depth`` tokens;
        ``synchronous``: no lookup (the row is a miss, its cache entries are dropped), and the
        economics of SSD rounds see nothing.

        An entry built deeper than ``depth`` answers with its first ``depth`` tokens: a prefix
        of a chain sampled token by token from q is itself such a chain, so the proposal law is
        unchanged (docs/speculation.md, "SSD's depth"). A shallower entry cannot answer."""
        seq = self.sequences.get(row.seq_id)
        if seq is None:
            return pb.SpeculateRowReply(seq_id=row.seq_id, status=pb.ROW_STATUS_UNKNOWN_SEQUENCE), None
        if len(seq.tokens) + len(row.committed_tokens) != row.committed_len:
            self._forget(row.seq_id)
            return pb.SpeculateRowReply(seq_id=row.seq_id, status=pb.ROW_STATUS_DESYNC), None
        vocab, tokens = self.runner.vocab_size, row.committed_tokens
        if (not 0 <= row.recovery_token < vocab or row.draft_temperature < 0 or row.committed_len > self.runner.max_model_len
                or (tokens and not 0 <= min(tokens) <= max(tokens) < vocab)):
            return pb.SpeculateRowReply(seq_id=row.seq_id, status=pb.ROW_STATUS_INVALID), None
        self._commit(seq, list(row.committed_tokens))
        if not self.runner.blocks.ensure_slots(seq.table, self._slots_needed(len(seq.tokens))):
            self.cache.drop(row.seq_id)
            return pb.SpeculateRowReply(seq_id=row.seq_id, status=pb.ROW_STATUS_OUT_OF_MEMORY), None
        if synchronous:
            self.cache.drop(row.seq_id)
            cached = None
        else:
            cached = self.cache.take(row.seq_id, row.n_prev, row.recovery_token)
            if cached is not None and len(cached.tokens) < depth:
                cached = None
        if row.n_prev >= 0 and seq.depth:
            self.economics.observe_outcome(row.n_prev, seq.depth)
        ship = row.draft_temperature > 0 and row.target_temperature > 0
        if cached is not None and (cached.probs is not None) != (row.draft_temperature > 0):
            cached = None  # built under another temperature regime: not a draw from this q
        plan = PendingRow(seq, row.recovery_token, [], cached is not None, row.draft_temperature, ship)
        if not synchronous:
            self.economics.observe_lookup(plan.hit)
        reply = pb.SpeculateRowReply(seq_id=row.seq_id, status=pb.ROW_STATUS_OK, hit=cached is not None)
        if cached is not None:
            plan.proposal = cached.tokens[:depth].tolist()
            reply.tokens.extend(plan.proposal)
            reply.proposal_is_sample = True
            if ship:
                reply.probs = proposal_codec.encode(cached.probs[:depth], self.settings.probs_dtype)
        return reply, plan

    def _slots_needed(self, committed: int) -> int:
        if self.build_cache:
            return tree_scratch_slots(committed, self.k, self.settings.budget)
        return committed + self.k + 1

    def _commit(self, seq: DraftSequence, new_tokens: list[int]) -> None:
        """Append committed tokens; keep only the KV computed for exactly these tokens."""
        old = len(seq.tokens)
        seq.tokens.extend(new_tokens)
        kv = seq.kv_tokens
        valid = min(len(kv), old)
        limit = min(len(kv), len(seq.tokens))
        while valid < limit and kv[valid] == seq.tokens[valid]:
            valid += 1
        del kv[valid:]

    def _fill_misses(self, misses: list[tuple[int, PendingRow]], replies: list, batch_size: int,
                     jit: bool | None, k: int) -> None:
        """Backups for the rows that missed; ``jit``: True forces JIT (None: the backup policy's
        choice); ``k``: tokens to draft (K, or a synchronous round's lookahead)."""
        use_jit = self._use_jit(batch_size, k) if jit is None else jit
        plans = [p for _, p in misses]
        if use_jit:
            started = time.perf_counter()
            tokens, probs = self.sampler.jit(plans, k)
            self.economics.observe_jit((time.perf_counter() - started) / k)
        else:
            tokens = [torch.randint(0, self.runner.vocab_size, (k,), generator=p.seq.generator) for p in plans]
            probs = [None] * len(plans)
        for (index, plan), toks, q in zip(misses, tokens, probs):
            plan.proposal = toks.tolist()
            plan.placeholder = not use_jit
            reply = replies[index]
            reply.tokens.extend(plan.proposal)
            reply.backup = pb.BACKUP_KIND_JIT if use_jit else pb.BACKUP_KIND_FAST
            reply.proposal_is_sample = use_jit
            if use_jit and plan.ship_probs:
                reply.probs = proposal_codec.encode(q, self.settings.probs_dtype)

    def _use_jit(self, batch_size: int, depth: int) -> bool:
        """Backup for a miss: JIT drafts real samples now; fast sends placeholders for free."""
        policy = self.settings.backup_policy
        if policy == pb.BACKUP_POLICY_ADAPTIVE:
            return self.economics.use_jit(batch_size, self.settings.jit_max_batch_size, depth)
        return policy != pb.BACKUP_POLICY_FAST

    # -- build (off the critical path) -----------------------------------------------------
    def build(self) -> None:
        """Glue, fork, tree decode and store for the rows answered last (no-op in SD mode)."""
        pending, self.pending = self.pending, []
        trace, self._trace = self._trace, None
        if not self.build_cache or not pending:
            self._idle_since = time.perf_counter()
            if trace is not None:
                trace.end()
            return
        if trace is not None:
            trace.mark(None)  # reply -> build: the reply's trip out, not a phase
        start = time.perf_counter()
        k = len(pending[0].proposal)  # the round's depth: the tree is built as deep for the next round
        seqs = [p.seq for p in pending]
        committed = [len(s.tokens) for s in seqs]
        if self.settings.geometric:
            self.fan_out_hit = self.fan_out_miss = self.economics.geometric_lists(self.fan_out_hit)
        fan_hit, fan_miss = self.fan_out_hit, self.fan_out_miss
        if k < self.k:
            fan_hit, fan_miss = shorten_fan_out(fan_hit, k), shorten_fan_out(fan_miss, k)
        branches = self.tree_budget.branches(len(pending), k, self._build_budget_s)
        if branches < self.settings.budget:
            fan_hit, fan_miss = scale_fan_out(fan_hit, branches), scale_fan_out(fan_miss, branches)
        histories = [p.seq.history(p.recovery) for p in pending]  # the requests' logits processors
        proposals = torch.tensor([p.proposal for p in pending], dtype=torch.long)
        with self.runner.device_step():  # glue and fork: one launch on a GPU
            glue = process_block(self._glue(pending, k), histories, proposals)  # forks follow the processed law
            if trace is not None:
                trace.mark(GLUE_SPAN)
            hit = torch.tensor([p.hit for p in pending])
            fan = select_fan_out(hit, fan_hit, fan_miss)
            placeholder = torch.tensor([p.placeholder for p in pending])
            placeholder_fan = placeholder_fan_out(k, branches, self.runner.vocab_size) if placeholder.any() else None
            if placeholder_fan is not None:
                fan[placeholder] = torch.tensor(placeholder_fan)
            forks, depth = fork_candidates(glue, proposals, fan)
        if trace is not None:
            trace.mark(FORK_SPAN)
        forked = time.perf_counter()
        temps = torch.tensor([p.draft_temperature for p in pending])
        gens = [s.generator for s in seqs]
        processed = any(h is not None for h in histories)
        if processed:  # branch m continues [r, s_1..s_j_m, fork_m]: the proposal tokens it keeps come first
            keep = torch.arange(k)[None, None, :] < depth[:, :, None]
            before_fork = torch.where(keep, proposals[:, None, :], NO_TOKEN)
        tables = [s.table.blocks for s in seqs]
        batch, m = forks.shape
        current = forks
        tree_tokens, tree_probs = [], []
        block_size = self.runner.config.block_size
        # On CUDA the Triton tree kernel, unless the steps replay CUDA graphs: a graph would freeze
        # the kernel's per-step layout, so graphed steps attend through the masked default backend
        triton_tree = self.runner.device.type == "cuda" and self.runner.graphs is None
        layout = TreeStep.build(tables, committed, depth, k, 0, block_size) if triton_tree else None
        tree = TreeRound(tables, committed, depth, k, block_size)
        for step in range(k):
            with self.runner.device_step():  # metadata, forward and sampling: one launch on a GPU
                meta, positions = tree.step(step)
                attend = None if self.runner.graphs is not None else functools.partial(
                    tree_attention, tree=layout and dataclasses.replace(layout, step=step))
                logits = self.runner.forward(current.reshape(-1), positions, meta, attention=attend).view(batch, m, -1)
                extra = torch.cat([before_fork, forks[:, :, None], *(t[:, :, None] for t in tree_tokens)],
                                  dim=2) if processed else None
                current, probs = self.sampler.sample(logits, temps, gens, histories, extra)
            tree_tokens.append(current)
            tree_probs.append(probs)
        self.tree_budget.observe(batch, m, k, forked - start, time.perf_counter() - forked)
        tokens = torch.stack(tree_tokens, dim=2)  # [B, M, K]
        probs = None if tree_probs[0] is None else torch.stack(tree_probs, dim=2)  # [B, M, K, V]
        for b, plan in enumerate(pending):
            keep_probs = probs is not None and plan.draft_temperature > 0
            entries = {
                (int(depth[b, j]), int(forks[b, j])): CachedDraft(tokens[b, j], probs[b, j] if keep_probs else None)
                for j in range(m)
            }
            self.cache.store(plan.seq.seq_id, entries)
        self._idle_since = time.perf_counter()
        self.last_build_us = int((self._idle_since - start) * 1e6)
        self.last_build_branches = m
        if trace is not None:
            trace.mark(TREE_SPAN)
            trace.end(self.fan_out_hit, self.fan_out_miss, m)

    def _close_trace(self, error: str = "") -> None:
        trace, self._trace = self._trace, None
        if trace is not None:
            trace.end(error=error)

    def _glue(self, pending: list[PendingRow], k: int) -> torch.Tensor:
        """Forward ``[r, s_1..s_k]`` at positions C..C+k for every row (k: the round's depth):
        [B, k+1, V] logits.

        This also (re)writes the draft KV of the region that becomes committed once the target's
        outcome is known, always under the true context (docs/speculation.md, "One round").
        """
        chunks = []
        for p in pending:
            s = p.seq
            start = min(len(s.kv_tokens), len(s.tokens))
            chunks.append(CausalChunk(s.table.blocks, start, s.tokens[start:] + [p.recovery] + p.proposal))
        logits = self.runner.run_causal(chunks, all_logits=True)
        ends = torch.cumsum(torch.tensor([len(c.token_ids) for c in chunks]), 0)
        rows = (ends[:, None] - (k + 1) + torch.arange(k + 1)[None, :]).reshape(-1)
        for p, c in zip(pending, chunks):
            p.seq.kv_tokens = p.seq.tokens + [p.recovery] + p.proposal
        return logits[rows].view(len(pending), k + 1, -1)


def draft_runner(config: EngineConfig, settings: DraftSettings) -> ModelRunner:
    """The draft's model and KV cache, with room for glue + tree scratch per sequence."""
    lookahead = tree_scratch_slots(0, settings.k, settings.budget)
    # the draft is small and latency-bound: always one device (tensor parallelism is the target's)
    return ModelRunner(replace(config, enable_prefix_caching=False, tensor_parallel_size=1), lookahead_slots=lookahead,
                       extra_positions=2 * settings.k + 2)
