"""Scheduler's contract with a real BlockManager: FCFS admission within the sequence and token
limits, prefill steps before decode steps, and preemption of the newest sequence when the cache
cannot grow, which goes back to the head of the queue and later resumes with all its tokens.

The engine drives it exactly like these tests do: ``schedule()``, then (for a decode step)
append the new token to each sequence before the next call.
"""

from __future__ import annotations

from saguaro.cache import BlockManager
from saguaro.sampling import SamplingParams
from saguaro.scheduler import Scheduler
from saguaro.sequence import Sequence, SequenceStatus

BS = 4


def make_sequence(seq_id: int, num_tokens: int, first_token: int | None = None) -> Sequence:
    """A fresh request; distinct tokens per id unless ``first_token`` makes prompts share them."""
    start = seq_id * 1000 if first_token is None else first_token
    tokens = list(range(start, start + num_tokens))
    return Sequence(seq_id, tokens, num_prompt_tokens=num_tokens, params=SamplingParams(), generator=None)


def make_scheduler(num_blocks: int = 64, max_num_seqs: int = 8, max_num_batched_tokens: int = 1024,
                   lookahead: int = 0, enable_prefix_caching: bool = False) -> Scheduler:
    blocks = BlockManager(num_blocks, BS, enable_prefix_caching=enable_prefix_caching)
    return Scheduler(blocks, max_num_seqs, max_num_batched_tokens, lookahead)


def ids(sequences) -> list[int]:
    return [seq.seq_id for seq in sequences]


def decode_one_token(batch_sequences: list[Sequence]) -> None:
    """What the engine does after a decode step: each sequence commits one more token."""
    for seq in batch_sequences:
        seq.token_ids.append(7)
        seq.num_computed = seq.num_tokens - 1


# -- admission --------------------------------------------------------------------------


def test_nothing_to_do_schedules_nothing():
    scheduler = make_scheduler()
    assert not scheduler.has_work()
    assert scheduler.schedule() is None


def test_waiting_sequences_are_admitted_first_come_first_served_as_one_prefill():
    scheduler = make_scheduler()
    for seq_id in (3, 1, 2):
        scheduler.add(make_sequence(seq_id, 5))
    batch = scheduler.schedule()
    assert batch.is_prefill and ids(batch.sequences) == [3, 1, 2]
    assert ids(scheduler.running) == [3, 1, 2] and not scheduler.waiting
    assert all(seq.status is SequenceStatus.RUNNING and seq.num_computed == 0 for seq in batch.sequences)
    assert all(len(seq.table.blocks) == 2 for seq in batch.sequences)


def test_prefill_goes_before_decode_and_decode_batches_every_running_sequence():
    scheduler = make_scheduler()
    scheduler.add(make_sequence(0, 5))
    first = scheduler.schedule()
    decode_one_token(first.sequences)
    scheduler.add(make_sequence(1, 5))
    second = scheduler.schedule()
    assert second.is_prefill and ids(second.sequences) == [1]  # the newcomer's prefill waits for no decode
    third = scheduler.schedule()
    assert not third.is_prefill and ids(third.sequences) == [0, 1]


def test_max_num_seqs_caps_the_running_sequences_not_just_one_batch():
    scheduler = make_scheduler(max_num_seqs=2)
    for seq_id in range(3):
        scheduler.add(make_sequence(seq_id, 5))
    assert ids(scheduler.schedule().sequences) == [0, 1]
    batch = scheduler.schedule()  # a slot is still taken by each running sequence
    assert not batch.is_prefill and ids(batch.sequences) == [0, 1]
    assert ids(scheduler.waiting) == [2]
    scheduler.finish(scheduler.running[0])
    batch = scheduler.schedule()
    assert batch.is_prefill and ids(batch.sequences) == [2]


def test_the_token_budget_limits_one_prefill_batch():
    scheduler = make_scheduler(max_num_batched_tokens=10)
    for seq_id in range(3):
        scheduler.add(make_sequence(seq_id, 4))
    assert ids(scheduler.schedule().sequences) == [0, 1]  # 8 tokens; a third would make 12
    assert ids(scheduler.schedule().sequences) == [2]  # the next step admits the rest


def test_a_prompt_larger_than_the_token_budget_runs_alone():
    scheduler = make_scheduler(max_num_batched_tokens=10)
    scheduler.add(make_sequence(0, 30))
    scheduler.add(make_sequence(1, 2))
    assert ids(scheduler.schedule().sequences) == [0]
    assert ids(scheduler.schedule().sequences) == [1]

    scheduler = make_scheduler(max_num_batched_tokens=10)
    scheduler.add(make_sequence(0, 2))
    scheduler.add(make_sequence(1, 30))
    assert ids(scheduler.schedule().sequences) == [0]  # not behind another prompt in the same batch
    assert ids(scheduler.schedule().sequences) == [1]


def test_only_uncached_prompt_tokens_spend_the_token_budget():
    scheduler = make_scheduler(max_num_batched_tokens=8, enable_prefix_caching=True)
    warm = make_sequence(0, 5, first_token=100)
    scheduler.add(warm)
    scheduler.schedule()
    scheduler.blocks.register_computed(warm.table, warm.token_ids, 5)  # the prefill ran: block 0 cached
    sharing = make_sequence(1, 8, first_token=100)  # its first block is the cached one
    scheduler.add(sharing)
    scheduler.add(make_sequence(2, 4))
    batch = scheduler.schedule()
    assert ids(batch.sequences) == [1, 2]  # 4 uncached + 4 tokens fit the budget of 8
    assert sharing.num_computed == BS
    assert sharing.table.blocks[0] == warm.table.blocks[0]


def test_admission_stops_at_the_first_prompt_the_cache_cannot_hold():
    scheduler = make_scheduler(num_blocks=4)
    scheduler.add(make_sequence(0, 8))  # 2 blocks
    scheduler.add(make_sequence(1, 12))  # 3 blocks: does not fit next to the first
    scheduler.add(make_sequence(2, 4))  # would fit, but must not overtake the older request
    assert ids(scheduler.schedule().sequences) == [0]
    batch = scheduler.schedule()
    assert not batch.is_prefill and ids(batch.sequences) == [0]
    assert ids(scheduler.waiting) == [1, 2]
    assert all(seq.status is SequenceStatus.WAITING and seq.table.blocks == [] for seq in scheduler.waiting)


# -- decode reservation and preemption ------------------------------------------------


def test_decode_reserves_slots_for_the_next_token_and_the_lookahead():
    scheduler = make_scheduler(lookahead=4)
    seq = make_sequence(0, 4)
    scheduler.add(seq)
    scheduler.schedule()
    assert len(seq.table.blocks) == 1
    scheduler.schedule()
    assert len(seq.table.blocks) == scheduler.blocks.blocks_needed(4 + 4)


def test_when_the_cache_is_full_the_newest_sequence_is_preempted_and_requeued_first():
    scheduler = make_scheduler(num_blocks=4, max_num_seqs=2)
    old, new, queued = make_sequence(0, 4), make_sequence(1, 4), make_sequence(2, 4)
    for seq in (old, new, queued):
        scheduler.add(seq)
    assert ids(scheduler.schedule().sequences) == [0, 1]
    for _ in range(5):  # decode steps at 4..8 tokens: from 5 on, each sequence holds 2 of the 4 blocks
        batch = scheduler.schedule()
        assert ids(batch.sequences) == [0, 1]
        decode_one_token(batch.sequences)
    # 9 tokens need a third block for the older sequence: the newer one makes room.
    batch = scheduler.schedule()
    assert not batch.is_prefill and ids(batch.sequences) == [0]
    assert ids(scheduler.waiting) == [1, 2]  # ahead of the request that was already waiting
    assert new.status is SequenceStatus.WAITING and new.table.blocks == [] and new.num_computed == 0
    assert new.num_tokens == 9  # it keeps its generated tokens, to be recomputed
    assert (new.num_preemptions, scheduler.num_preemptions) == (1, 1)
    assert len(old.table.blocks) == 3


def test_a_preempted_sequence_resumes_with_a_prefill_of_all_its_tokens():
    scheduler = make_scheduler(num_blocks=4, max_num_seqs=2)
    old, new = make_sequence(0, 4), make_sequence(1, 4)
    scheduler.add(old)
    scheduler.add(new)
    scheduler.schedule()
    for _ in range(5):
        decode_one_token(scheduler.schedule().sequences)
    scheduler.schedule()  # 9 tokens: the newer sequence is preempted
    assert new.status is SequenceStatus.WAITING
    scheduler.finish(old)
    assert old.status is SequenceStatus.FINISHED and old.table.blocks == []
    batch = scheduler.schedule()
    assert batch.is_prefill and ids(batch.sequences) == [1]
    assert new.status is SequenceStatus.RUNNING and new.num_computed == 0
    assert len(new.table.blocks) == scheduler.blocks.blocks_needed(new.num_tokens)


def test_the_sequence_that_cannot_grow_is_itself_preempted_when_it_is_the_newest():
    scheduler = make_scheduler(num_blocks=3, max_num_seqs=2)
    old, new = make_sequence(0, 4), make_sequence(1, 8)
    scheduler.add(old)
    scheduler.add(new)
    scheduler.schedule()  # 1 + 2 blocks: the cache is full
    decode_one_token([new])  # only the newest needs a third block, and it is the tail of the running list
    batch = scheduler.schedule()
    assert ids(batch.sequences) == [0] and ids(scheduler.waiting) == [1]
    assert old.num_preemptions == 0 and len(old.table.blocks) == 1
    assert new.num_preemptions == 1


def test_finishing_a_waiting_sequence_drops_it_from_the_queue():
    scheduler = make_scheduler(max_num_seqs=1)
    running, waiting = make_sequence(0, 4), make_sequence(1, 4)
    scheduler.add(running)
    scheduler.add(waiting)
    scheduler.schedule()
    scheduler.finish(waiting)  # e.g. aborted before admission
    assert waiting.status is SequenceStatus.FINISHED and not scheduler.waiting
    scheduler.finish(running)
    assert not scheduler.has_work() and scheduler.blocks.num_free_blocks == 64
