"""The block manager (allocation, freeing, prefix sharing, copy-on-write, eviction) and the scheduler
(token budget, chunked prefill, preemption of the newest, no starvation), without a model."""

from __future__ import annotations

import random

import pytest

from tokenmill.deploy.serve.block_manager import NULL_BLOCK, BlockManager, block_hash
from tokenmill.deploy.serve.scheduler import Scheduler
from tokenmill.deploy.serve.sequence import Request, Sequence, Status
from tokenmill.model.sampling import SamplingParams


def admit(bm: BlockManager, seq_id: int, tokens: list[int], num_tokens: int | None = None) -> list[int]:
    hits = bm.lookup(tokens)
    assert bm.can_admit(hits, num_tokens or len(tokens))
    bm.admit(seq_id, tokens, hits, num_tokens or len(tokens))
    return hits


def all_free(bm: BlockManager) -> bool:
    return bm.num_free_blocks == bm.num_usable_blocks and not any(bm.ref) and not bm.tables


def test_blocks_are_taken_as_a_sequence_grows_and_given_back_at_the_end():
    bm = BlockManager(num_blocks=9, block_size=4)
    tokens = list(range(100, 106))
    admit(bm, 1, tokens)
    assert len(bm.tables[1]) == 2 and NULL_BLOCK not in bm.tables[1]
    assert bm.num_free_blocks == 6
    assert bm.slots() == (6, 8)
    for position in range(6, 13):  # decode seven tokens, one at a time
        assert bm.append_slots(1, position, 1) == []
    assert len(bm.tables[1]) == 4  # 13 tokens: blocks 4, 4, 4, 1
    assert bm.slots() == (13, 16)
    assert bm.usage() == pytest.approx(4 / 8)
    bm.free(1)
    assert all_free(bm)


def test_a_refused_append_changes_nothing():
    bm = BlockManager(num_blocks=4, block_size=4)  # 3 usable blocks
    admit(bm, 1, list(range(8)))
    admit(bm, 2, list(range(50, 53)))
    assert bm.num_free_blocks == 0
    before = (list(bm.tables[1]), list(bm.ref), list(bm.fill))
    assert bm.append_slots(1, 8, 1) is None
    assert (bm.tables[1], bm.ref, bm.fill) == before
    assert bm.append_slots(2, 3, 1) == []  # room left in its own block
    bm.free(2)
    assert bm.append_slots(1, 8, 1) == []


def test_prefix_blocks_are_shared_by_chained_hash_with_reference_counts():
    bm = BlockManager(num_blocks=16, block_size=4)
    system = list(range(1, 13))  # three full blocks
    admit(bm, 1, system + [20, 21])
    bm.mark_computed(1, system + [20, 21], 14)
    assert len(bm.cached) == 3

    # Same three blocks, then something else: all three are found and shared.
    hits = admit(bm, 2, system + [30, 31, 32])
    assert hits == bm.tables[1][:3] == bm.tables[2][:3]
    assert [bm.ref[b] for b in hits] == [2, 2, 2]
    assert bm.tables[1][3] != bm.tables[2][3]

    # Block 1 differs, block 2 is equal: only block 0 may match, since a block's hash covers its prefix.
    other = system[:4] + [99, 98, 97, 96] + system[8:] + [5]
    assert bm.lookup(other) == [bm.tables[1][0]]
    assert block_hash(0, system[:4]) == bm.hash_of[bm.tables[1][0]]

    # Queries and hits are counted in tokens, at admission.
    assert (bm.prefix_queries, bm.prefix_hits) == (14 + 15, 12)
    bm.free(1)
    assert [bm.ref[b] for b in hits] == [1, 1, 1]
    bm.free(2)
    assert all_free(bm)


def test_a_fully_cached_prompt_still_computes_its_last_token():
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(8))
    admit(bm, 1, prompt)
    bm.mark_computed(1, prompt, 8)
    assert len(bm.cached) == 2
    # The logits of the last token are needed, so its block is not taken from the cache.
    assert bm.lookup(prompt) == bm.tables[1][:1]
    assert bm.lookup(prompt + [8]) == bm.tables[1][:2]


def test_freed_blocks_stay_findable_until_evicted_least_recently_freed_first():
    bm = BlockManager(num_blocks=7, block_size=2)  # 6 usable
    a = [1, 2, 3, 4, 5]
    admit(bm, 1, a)
    bm.mark_computed(1, a, 5)
    cached = bm.tables[1][:2]
    bm.free(1)
    assert all_free(bm)
    assert bm.lookup(a) == cached  # still there after its sequence finished
    hits = admit(bm, 2, a)  # revived from the free list
    assert hits == cached and bm.num_free_blocks == 3
    bm.free(2)
    # A sequence that needs every block evicts them.
    admit(bm, 3, list(range(40, 52)))
    assert bm.lookup(a) == [] and not bm.cached
    bm.free(3)
    assert all_free(bm)


def test_forked_sequences_copy_the_shared_partial_block_before_writing():
    bm = BlockManager(num_blocks=8, block_size=4)
    prompt = list(range(6))  # blocks: full, half full
    admit(bm, 1, prompt)
    bm.mark_computed(1, prompt, 6)
    bm.fork(1, 2)
    bm.fork(1, 3)
    full, partial = bm.tables[1]
    assert bm.ref[full] == bm.ref[partial] == 3

    copies = bm.append_slots(2, 6, 1)  # child 2 writes position 6, into the shared block
    assert copies == [(partial, bm.tables[2][1])] and bm.tables[2][1] != partial
    assert bm.ref[partial] == 2 and bm.fill[bm.tables[2][1]] == 3
    copies = bm.append_slots(3, 6, 1)
    assert copies == [(partial, bm.tables[3][1])]
    assert bm.append_slots(1, 6, 1) == []  # the last holder writes in place
    assert bm.tables[1][1] == partial and bm.ref[partial] == 1
    assert bm.ref[full] == 3  # the full block is never written, so it stays shared
    for s in (1, 2, 3):
        bm.free(s)
    assert all_free(bm)


def test_without_prefix_caching_nothing_is_shared():
    bm = BlockManager(num_blocks=8, block_size=4, prefix_caching=False)
    prompt = list(range(9))
    admit(bm, 1, prompt)
    bm.mark_computed(1, prompt, 9)
    assert bm.lookup(prompt + [1]) == [] and not bm.cached


# -- the scheduler ---------------------------------------------------------------------------------

class Driver:
    """The engine's bookkeeping without a model: computed tokens advance, a finished prompt grows one token per step."""

    def __init__(self, num_blocks: int, block_size: int, max_num_seqs: int, budget: int) -> None:
        self.bm = BlockManager(num_blocks, block_size)
        self.scheduler = Scheduler(self.bm, max_num_seqs, budget)
        self.arrivals, self.ids = 0, 0

    def add(self, prompt_len: int, max_tokens: int, first_token: int = 0) -> Sequence:
        request = Request(str(self.arrivals), list(range(first_token, first_token + prompt_len)),
                          SamplingParams(max_tokens=max_tokens), self.arrivals)
        request.forked = True
        seq = Sequence(self.ids, request, 0, list(request.prompt_ids), None)
        request.seqs.append(seq)
        self.arrivals, self.ids = self.arrivals + 1, self.ids + 1
        self.scheduler.add(seq)
        return seq

    def step(self):
        step = self.scheduler.schedule()
        for seq, n in zip(step.seqs, step.num_tokens):
            seq.num_computed += n
            self.bm.mark_computed(seq.seq_id, seq.token_ids, seq.num_computed)
            if seq.num_uncomputed == 0:
                seq.token_ids.append(7)
                if len(seq.output_ids) == seq.request.params.max_tokens:
                    seq.finish("length")
                    self.scheduler.remove(seq)
        return step


def test_decoding_sequences_go_first_and_long_prompts_are_chunked():
    d = Driver(num_blocks=64, block_size=4, max_num_seqs=4, budget=8)
    short = d.add(prompt_len=3, max_tokens=10)
    step = d.step()
    assert step.seqs == [short] and step.num_tokens == [3]
    long = d.add(prompt_len=20, max_tokens=2, first_token=100)
    chunks = []
    while long.num_computed < 20:
        step = d.step()
        assert step.seqs[0] is short and step.num_tokens[0] == 1  # a decode step each time
        chunks.append(step.num_tokens[step.seqs.index(long)])
    assert chunks == [7, 7, 6]  # what the budget of 8 leaves after one decoding token


def test_the_newest_sequence_is_preempted_and_recomputed_later():
    d = Driver(num_blocks=9, block_size=4, max_num_seqs=8, budget=64)  # 32 token slots
    seqs = [d.add(prompt_len=6, max_tokens=12, first_token=10 * i) for i in range(3)]
    first = d.step()
    assert first.seqs == seqs  # 3 x 2 blocks of 8 usable
    preempted = []
    while d.scheduler.has_unfinished():
        step = d.step()
        preempted += step.preempted
        assert d.bm.num_free_blocks >= 0
    assert preempted and preempted[0] is seqs[2]  # the newest goes first
    assert all(s.status is Status.FINISHED and len(s.output_ids) == 12 for s in seqs)
    assert d.scheduler.num_preemptions == len(preempted)
    assert all_free(d.bm)


def test_every_request_finishes_and_requests_start_in_arrival_order():
    rng = random.Random(0)
    d = Driver(num_blocks=40, block_size=4, max_num_seqs=6, budget=24)  # 156 token slots
    seqs, started, steps = [], [], 0
    while steps < 3000 and (len(seqs) < 60 or d.scheduler.has_unfinished()):
        if len(seqs) < 60 and rng.random() < 0.5:
            prompt_len, max_tokens, first = rng.randint(1, 50), rng.randint(1, 40), rng.randint(0, 3)
            seqs.append(d.add(prompt_len, max_tokens, first_token=first))
        for seq in d.step().seqs:
            if seq not in started:
                started.append(seq)
        steps += 1
    assert all(s.status is Status.FINISHED for s in seqs), "a request starved"
    assert started == seqs
    assert d.scheduler.num_preemptions > 0  # the pool was tight enough to matter
    assert all_free(d.bm)


def test_a_budget_smaller_than_the_batch_is_refused():
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        Scheduler(BlockManager(8), max_num_seqs=16, max_num_batched_tokens=8)
