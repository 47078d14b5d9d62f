"""BlockManager's contract, on real objects: reference counts, prefix reuse, rollback, LRU
eviction of freed cached blocks, and refusing (without side effects) what does not fit.

The engine and the scheduler build on these rules without re-checking them: a wrong count
here corrupts another sequence's KV silently, so each rule gets its own test.
"""

from __future__ import annotations

from saguaro.cache.block_manager import BlockManager, BlockTable
from saguaro.cache.prefix_hash import block_hashes

BS = 4


def ref_counts(manager: BlockManager, table: BlockTable) -> list[int]:
    return [manager.blocks[block_id].ref_count for block_id in table.blocks]


def computed_sequence(manager: BlockManager, tokens: list[int]) -> BlockTable:
    """A sequence admitted and run through prefill: every full block of it is hashed."""
    table = BlockTable()
    assert manager.allocate_prompt(table, tokens) is not None
    manager.register_computed(table, tokens, len(tokens))
    return table


class EventRecorder:
    def __init__(self) -> None:
        self.stored: list[int] = []
        self.evicted: list[int] = []

    def blocks_stored(self, hashes: list[int]) -> None:
        self.stored.extend(hashes)

    def blocks_evicted(self, hashes: list[int]) -> None:
        self.evicted.extend(hashes)


# -- allocation and reference counts ---------------------------------------------------------


def test_a_new_manager_has_every_block_free():
    manager = BlockManager(num_blocks=8, block_size=BS)
    assert manager.num_free_blocks == 8
    assert manager.usage() == 0.0
    assert [manager.blocks_needed(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_allocate_prompt_gives_a_cold_sequence_fresh_blocks_it_owns_alone():
    manager = BlockManager(num_blocks=8, block_size=BS)
    table = BlockTable()
    assert manager.allocate_prompt(table, list(range(10))) == 0
    assert len(table.blocks) == 3 and len(set(table.blocks)) == 3
    assert ref_counts(manager, table) == [1, 1, 1]
    assert (table.num_hashed, table.last_hash) == (0, None)
    assert manager.num_free_blocks == 5
    assert manager.usage() == 3 / 8
    assert (manager.stats.queried_tokens, manager.stats.hit_tokens) == (10, 0)


def test_register_computed_hashes_only_full_blocks_below_the_computed_tokens():
    manager = BlockManager(num_blocks=8, block_size=BS)
    tokens = list(range(10))
    table = BlockTable()
    manager.allocate_prompt(table, tokens)
    manager.register_computed(table, tokens, num_computed=7)  # block 1 is not full of computed KV
    assert table.num_hashed == 1
    manager.register_computed(table, tokens, num_computed=10)  # block 2 holds 2 of 4 slots
    hashes = block_hashes(tokens, BS)
    assert table.num_hashed == 2 and table.last_hash == hashes[-1]
    assert [manager.blocks[b].hash for b in table.blocks] == [*hashes, None]
    assert manager.by_hash == {hashes[0]: table.blocks[0], hashes[1]: table.blocks[1]}


def test_a_shared_prefix_reuses_the_cached_blocks_and_counts_both_owners():
    manager = BlockManager(num_blocks=8, block_size=BS)
    first = computed_sequence(manager, list(range(9)))
    second = BlockTable()
    cached = manager.allocate_prompt(second, [*range(8), 99, 98])
    assert cached == 2 * BS
    assert second.blocks[:2] == first.blocks[:2]
    assert second.blocks[2] not in first.blocks  # the sequence's own tail is a fresh block
    assert ref_counts(manager, second) == [2, 2, 1]
    assert (second.num_hashed, second.last_hash) == (2, first.last_hash)
    assert (manager.stats.queried_tokens, manager.stats.hit_tokens) == (9 + 10, 8)


def test_a_fully_cached_prompt_leaves_its_last_token_to_compute():
    manager = BlockManager(num_blocks=8, block_size=BS)
    tokens = list(range(8))
    computed_sequence(manager, tokens)
    # Two full cached blocks, but the prefill needs logits for the last token: one block is recomputed.
    assert manager.allocate_prompt(BlockTable(), tokens) == BS


def test_prefix_hits_stop_at_the_first_block_whose_chained_hash_differs():
    manager = BlockManager(num_blocks=8, block_size=BS)
    computed_sequence(manager, list(range(9)))
    # Same second block, different first block: the chained hash differs, so nothing is reused.
    assert manager.allocate_prompt(BlockTable(), [50, 51, 52, 53, 4, 5, 6, 7, 8]) == 0


def test_freeing_one_owner_of_a_shared_block_keeps_it_for_the_other():
    manager = BlockManager(num_blocks=8, block_size=BS)
    first = computed_sequence(manager, list(range(9)))
    second = BlockTable()
    manager.allocate_prompt(second, list(range(9)))
    manager.free(first)
    assert first.blocks == [] and (first.num_hashed, first.last_hash) == (0, None)
    assert ref_counts(manager, second) == [1, 1, 1]
    assert manager.num_free_blocks == 8 - 3  # only the first sequence's unshared tail came back


def test_freed_hashed_blocks_stay_reusable_and_unhashed_ones_go_back_empty():
    manager = BlockManager(num_blocks=8, block_size=BS)
    tokens = list(range(10))
    table = computed_sequence(manager, tokens)
    hashed, tail = table.blocks[:2], table.blocks[2]
    manager.free(table)
    assert set(manager.evictable) == set(hashed)
    assert tail in manager.empty and manager.blocks[tail].hash is None
    assert manager.num_free_blocks == 8
    again = BlockTable()
    assert manager.allocate_prompt(again, tokens) == 2 * BS
    assert again.blocks[:2] == hashed
    assert ref_counts(manager, again)[:2] == [1, 1]
    assert not set(hashed) & set(manager.evictable)  # referenced again: no longer evictable


def test_a_duplicate_of_a_cached_block_is_not_reusable_and_frees_to_the_empty_pool():
    manager = BlockManager(num_blocks=8, block_size=BS)
    tokens = list(range(9))
    first, second = BlockTable(), BlockTable()
    manager.allocate_prompt(first, tokens)
    manager.allocate_prompt(second, tokens)  # admitted before the first registered: no hits
    manager.register_computed(first, tokens, 9)
    manager.register_computed(second, tokens, 9)
    assert second.num_hashed == 2  # hashed for its own chain ...
    assert set(manager.by_hash.values()) == set(first.blocks[:2])  # ... but the first owns the hashes
    duplicates = second.blocks[:2]
    manager.free(second)
    assert all(b in manager.empty for b in duplicates)
    assert manager.evictable == {} and len(manager.empty) == 8 - 3


# -- growth and rollback ------------------------------------------------------------------


def test_ensure_slots_grows_the_table_for_lookahead_slots_and_is_idempotent():
    manager = BlockManager(num_blocks=8, block_size=BS)
    table = BlockTable()
    manager.allocate_prompt(table, list(range(5)))
    assert manager.ensure_slots(table, 5 + 6)
    assert len(table.blocks) == 3 and ref_counts(manager, table) == [1, 1, 1]
    assert manager.ensure_slots(table, 9)  # already room: nothing changes
    assert len(table.blocks) == 3 and manager.num_free_blocks == 5


def test_truncate_releases_lookahead_blocks_but_never_hashed_ones():
    manager = BlockManager(num_blocks=8, block_size=BS)
    tokens = list(range(9))
    table = computed_sequence(manager, tokens)  # 2 hashed blocks + 1
    manager.ensure_slots(table, 9 + 8)  # lookahead: 2 more blocks
    lookahead = table.blocks[3:]
    manager.truncate(table, 10)
    assert len(table.blocks) == 3
    assert all(b in manager.empty and manager.blocks[b].ref_count == 0 for b in lookahead)
    manager.truncate(table, 1)  # rolling back below the hashed prefix keeps the hashed blocks
    assert len(table.blocks) == 2 and table.num_hashed == 2
    assert manager.num_free_blocks == 8 - 2


# -- eviction ---------------------------------------------------------------------------


def test_empty_blocks_are_used_before_any_cached_block_is_evicted():
    manager = BlockManager(num_blocks=4, block_size=BS)
    cached = computed_sequence(manager, list(range(9)))  # 2 hashed blocks + 1 tail, 1 block never used
    hashed = cached.blocks[:2]
    manager.free(cached)
    for _ in range(2):  # the two empty blocks
        table = BlockTable()
        manager.allocate_prompt(table, [90, 91])
        assert table.blocks[0] not in hashed
    assert list(manager.evictable) == hashed[::-1] and len(manager.by_hash) == 2


def test_cached_blocks_are_evicted_least_recently_freed_first_tail_before_root():
    manager = BlockManager(num_blocks=4, block_size=BS)
    recorder = EventRecorder()
    manager.listener = recorder
    old = list(range(9))
    old_hashes = block_hashes(old, BS)
    old_table = computed_sequence(manager, old)  # 2 hashed blocks + the tail; 1 block never used
    root, second_block = old_table.blocks[:2]
    manager.free(old_table)  # released tail first, so the chain's last block is the oldest in the LRU
    assert list(manager.evictable) == [second_block, root]

    table = BlockTable()
    manager.allocate_prompt(table, list(range(70, 79)))  # 3 fresh: the 2 empty blocks, then one eviction
    assert second_block in table.blocks and root not in table.blocks
    assert recorder.evicted == [old_hashes[1]]
    assert old_hashes[1] not in manager.by_hash and manager.blocks[second_block].hash is None
    # The root survived, so the old prefix still hits its first block.
    manager.free(table)
    assert manager.allocate_prompt(BlockTable(), old) == BS


def test_a_prefix_hit_takes_its_block_out_of_the_lru():
    manager = BlockManager(num_blocks=6, block_size=BS)
    a = computed_sequence(manager, [1, 2, 3, 4, 0])
    b = computed_sequence(manager, [5, 6, 7, 8, 0])
    a_block, b_block = a.blocks[0], b.blocks[0]
    manager.free(a)
    manager.free(b)
    assert list(manager.evictable) == [a_block, b_block]
    manager.allocate_prompt(BlockTable(), [1, 2, 3, 4, 9])  # hit on a's block
    assert list(manager.evictable) == [b_block]


# -- running out ------------------------------------------------------------------------


def test_a_prompt_that_does_not_fit_is_refused_and_nothing_changes():
    manager = BlockManager(num_blocks=3, block_size=BS)
    holder = BlockTable()
    manager.allocate_prompt(holder, list(range(5)))  # 2 of 3 blocks
    table = BlockTable()
    assert manager.allocate_prompt(table, list(range(100, 109))) is None  # needs 3
    assert table == BlockTable()
    assert manager.num_free_blocks == 1
    assert (manager.stats.queried_tokens, manager.stats.hit_tokens) == (5, 0)


def test_cached_prefix_blocks_that_are_free_do_not_count_as_room_for_the_rest():
    manager = BlockManager(num_blocks=3, block_size=BS)
    prefix = list(range(8))
    manager.free(computed_sequence(manager, [*prefix, 8]))  # 2 free cached blocks + 1 empty
    assert manager.num_free_blocks == 3
    # 2 hits + 2 fresh > 3 free blocks, since the hits themselves are among the free ones.
    assert manager.allocate_prompt(BlockTable(), [*prefix, 20, 21, 22, 23, 24]) is None
    assert len(manager.evictable) == 2 and manager.num_free_blocks == 3
    table = BlockTable()
    assert manager.allocate_prompt(table, [*prefix, 20, 21, 22, 23]) == 2 * BS  # 2 hits + 1 fresh fits
    assert manager.num_free_blocks == 0


def test_ensure_slots_refuses_growth_beyond_the_free_blocks_without_taking_any():
    manager = BlockManager(num_blocks=3, block_size=BS)
    table = BlockTable()
    manager.allocate_prompt(table, list(range(4)))
    assert not manager.ensure_slots(table, 4 + 3 * BS)  # 3 more blocks, 2 free
    assert len(table.blocks) == 1 and manager.num_free_blocks == 2
    assert manager.ensure_slots(table, 4 + 2 * BS)
    assert manager.num_free_blocks == 0


# -- prefix caching off -----------------------------------------------------------------


def test_without_prefix_caching_nothing_is_hashed_or_reused():
    manager = BlockManager(num_blocks=8, block_size=BS, enable_prefix_caching=False)
    tokens = list(range(9))
    table = computed_sequence(manager, tokens)
    assert table.num_hashed == 0 and manager.by_hash == {}
    assert manager.allocate_prompt(BlockTable(), tokens) == 0
    manager.free(table)
    assert manager.evictable == {} and manager.stats.hit_tokens == 0
