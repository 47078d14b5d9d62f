"""Continuous batching: FCFS admission, prefill-first steps, preemption by recompute.

A step is either a prefill batch (newly admitted sequences, whole prompts) or one decode
batch of every running sequence. Prefill goes first so new requests get their first token
quickly; decode batches then grow as sequences join. When the cache cannot grow a running
sequence, the most recently admitted one is preempted: its blocks are freed and it returns to
the head of the queue with all its tokens, to be recomputed by a later prefill.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from saguaro.cache import BlockManager
from saguaro.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledBatch:
    sequences: list[Sequence]
    is_prefill: bool


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int, lookahead: int = 0):
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.lookahead = lookahead  # extra KV slots a decode step may write past the committed tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch | None:
        prefill = self._admit()
        if prefill:
            return ScheduledBatch(prefill, is_prefill=True)
        decode = self._reserve_decode()
        return ScheduledBatch(decode, is_prefill=False) if decode else None

    def _admit(self) -> list[Sequence]:
        admitted: list[Sequence] = []
        budget = self.max_num_batched_tokens
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # A prompt larger than the token budget still runs, alone.
            if admitted and seq.num_tokens > budget:
                break
            cached = self.blocks.allocate_prompt(seq.table, seq.token_ids, reuse=not seq.scores_prompt)
            if cached is None:
                break
            self.waiting.popleft()
            seq.num_computed = cached
            if seq.num_cached_prompt_tokens is None:  # (a preempted sequence re-finds its own blocks)
                seq.num_cached_prompt_tokens = min(cached, seq.num_prompt_tokens)
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            admitted.append(seq)
            budget -= seq.num_tokens - cached
        return admitted

    def _reserve_decode(self) -> list[Sequence]:
        """Make room for each running sequence's next step, preempting from the tail."""
        i = 0
        while i < len(self.running):
            seq = self.running[i]
            if self.blocks.ensure_slots(seq.table, seq.num_tokens + self.lookahead):
                i += 1
                continue
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                break
        return list(self.running)

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.table)
        seq.num_computed = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.blocks.free(seq.table)
        seq.status = SequenceStatus.FINISHED
