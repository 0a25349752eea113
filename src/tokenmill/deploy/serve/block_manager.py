"""The paged KV cache's bookkeeping: a pool of fixed-size blocks and one block table per sequence.

As in vLLM (Kwon et al., 2023, PagedAttention), the keys and values of a sequence live in
blocks of `block_size` tokens scattered over one preallocated pool; its block table maps
position p to slot `table[p // block_size] * block_size + p % block_size`. Blocks are taken
when a sequence grows into them and given back when it finishes, so a sequence wastes at most
one partly filled block, not the unused tail of a maximum-length buffer.

Prefix sharing: a full block is identified by a hash of its tokens chained with the hash of
the block before it, so equal hashes mean equal prefixes. A sequence whose prompt starts with
blocks already in the pool (a shared system prompt, a preempted sequence coming back) takes
them with a reference count instead of computing them again. A block nobody holds stays in the
pool, still findable by its hash, until the least recently freed block is needed for something
else. A block held by more than one sequence is copied before one of them writes into it
(copy-on-write: the sequences forked for `n` samples share the prompt's last, partly filled
block).

Block 0 is never handed out: the runner pads the block tables of a group of sequences with it,
so padding never reads anyone's keys.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import xxhash

NULL_BLOCK = 0


def block_hash(parent: int, tokens: Sequence[int]) -> int:
    """The hash of a full block: its tokens and, through `parent`, every token before them."""
    data = parent.to_bytes(16, "little") + np.asarray(tokens, dtype=np.int64).tobytes()
    return xxhash.xxh3_128_intdigest(data)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int = 16, prefix_caching: bool = True) -> None:
        if num_blocks < 2:
            raise ValueError(f"the KV cache needs at least 2 blocks (one is reserved for padding), got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks, self.block_size, self.prefix_caching = num_blocks, block_size, prefix_caching
        self.ref = [0] * num_blocks
        self.fill = [0] * num_blocks  # tokens written into each block
        # Blocks nobody holds, least recently freed first; the ones still cached stay findable.
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_blocks))
        self.cached: dict[int, int] = {}  # hash -> block
        self.hash_of: dict[int, int] = {}  # block -> hash, for the blocks in `cached`
        self.tables: dict[int, list[int]] = {}  # sequence id -> block table
        self.hashes: dict[int, list[int]] = {}  # sequence id -> hashes of its computed full blocks
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which found

    @property
    def num_usable_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    def usage(self) -> float:
        """Share of the usable blocks held by some sequence."""
        return 1.0 - self.num_free_blocks / self.num_usable_blocks

    def slots(self) -> tuple[int, int]:
        """(token slots written, token slots allocated) over the blocks in use; a shared block counts once."""
        used = [b for b in range(1, self.num_blocks) if self.ref[b] > 0]
        return sum(self.fill[b] for b in used), len(used) * self.block_size

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- admission of a waiting sequence -------------------------------------------------------

    def lookup(self, token_ids: Sequence[int]) -> list[int]:
        """The cached blocks that hold a prefix of `token_ids`, longest first match, not yet taken.

        At most (len - 1) // block_size blocks: the last token is always computed again, since
        its logits are what the sequence needs next.
        """
        if not self.prefix_caching:
            return []
        hits, parent = [], 0
        for i in range((len(token_ids) - 1) // self.block_size):
            parent = block_hash(parent, token_ids[i * self.block_size : (i + 1) * self.block_size])
            block = self.cached.get(parent)
            if block is None:
                break
            hits.append(block)
        return hits

    def can_admit(self, hits: list[int], num_tokens: int, reserve: int = 0) -> bool:
        """Whether a sequence reusing `hits` can have blocks for `num_tokens` and leave `reserve` free."""
        revived = sum(1 for b in hits if self.ref[b] == 0)  # cached but free: taking them uses free blocks
        return self.blocks_for(num_tokens) - len(hits) + revived + reserve <= self.num_free_blocks

    def admit(self, seq_id: int, token_ids: Sequence[int], hits: list[int], num_tokens: int) -> None:
        """Give sequence `seq_id` the blocks `hits` (shared) and fresh blocks up to `num_tokens`."""
        assert seq_id not in self.tables, f"sequence {seq_id} already has blocks"
        self.prefix_queries += len(token_ids)
        self.prefix_hits += len(hits) * self.block_size
        for b in hits:
            self._take(b)
        self.tables[seq_id] = list(hits)
        self.hashes[seq_id] = [self.hash_of[b] for b in hits]
        copies = self.append_slots(seq_id, len(hits) * self.block_size, num_tokens - len(hits) * self.block_size)
        assert copies == [], "a newly admitted sequence shares no partly filled block"

    # -- growth --------------------------------------------------------------------------------

    def append_slots(self, seq_id: int, start: int, num_tokens: int) -> list[tuple[int, int]] | None:
        """Make room to write positions [start, start + num_tokens) of a sequence.

        Returns the (source, destination) block copies to make before writing (copy-on-write of
        shared blocks), or None, changing nothing, when the free blocks do not suffice.
        """
        table, end = self.tables[seq_id], start + num_tokens
        first, last = start // self.block_size, (end - 1) // self.block_size
        shared = [i for i in range(first, min(last + 1, len(table))) if self.ref[table[i]] > 1]
        if self.blocks_for(end) - len(table) + len(shared) > self.num_free_blocks:
            return None
        copies = []
        for i in shared:
            source, table[i] = table[i], self._allocate()
            self.ref[source] -= 1
            self.fill[table[i]] = self.fill[source]
            copies.append((source, table[i]))
        while len(table) < self.blocks_for(end):
            table.append(self._allocate())
        for i in range(first, last + 1):
            self.fill[table[i]] = max(self.fill[table[i]], min(end - i * self.block_size, self.block_size))
        return copies

    def mark_computed(self, seq_id: int, token_ids: Sequence[int], num_computed: int) -> None:
        """Register the blocks that `num_computed` tokens have filled in the prefix cache."""
        if not self.prefix_caching:
            return
        table, hashes = self.tables[seq_id], self.hashes[seq_id]
        for i in range(len(hashes), num_computed // self.block_size):
            parent = hashes[-1] if hashes else 0
            h = block_hash(parent, token_ids[i * self.block_size : (i + 1) * self.block_size])
            hashes.append(h)
            if h not in self.cached and table[i] not in self.hash_of:
                self.cached[h], self.hash_of[table[i]] = table[i], h

    def fork(self, parent_id: int, child_id: int) -> None:
        """Let `child_id` share every block of `parent_id` (the `n` samples of one prompt)."""
        self.tables[child_id] = list(self.tables[parent_id])
        self.hashes[child_id] = list(self.hashes[parent_id])
        for b in self.tables[child_id]:
            self.ref[b] += 1

    def free(self, seq_id: int) -> None:
        """Give back the blocks of a finished, aborted or preempted sequence."""
        table = self.tables.pop(seq_id, None)
        self.hashes.pop(seq_id, None)
        if table is None:
            return
        # Last block first: the end of a sequence is the least likely to be shared later, so it
        # should be evicted before the prefix.
        for b in reversed(table):
            self.ref[b] -= 1
            if self.ref[b] == 0:
                self.free_queue[b] = None
                if b not in self.hash_of:
                    self.free_queue.move_to_end(b, last=False)  # nothing to find in it: reuse it first

    # -- internals -----------------------------------------------------------------------------

    def _take(self, block: int) -> None:
        if self.ref[block] == 0:
            del self.free_queue[block]
        self.ref[block] += 1

    def _allocate(self) -> int:
        block, _ = self.free_queue.popitem(last=False)
        h = self.hash_of.pop(block, None)
        if h is not None:
            del self.cached[h]  # evicted: its contents are about to be overwritten
        self.ref[block], self.fill[block] = 1, 0
        return block
