"""Continuous batching (Yu et al., 2022, Orca): which sequences run in the next step, and with how many tokens.

Every step is planned afresh. Finished sequences have already left; the running ones go first,
decoding ones (one token each) before those still reading their prompt, oldest first; a long
prompt is read in chunks of whatever the step's token budget leaves (chunked prefill), so one
long prompt never stalls everybody's next token. Then waiting sequences join, first come first
served, while the budget, the sequence limit and the free blocks allow.

When the blocks run out, the newest running sequence is preempted: its blocks are freed and it
waits, at the head of the queue, to be computed again from its tokens (recompute, cheaper than
swapping on a GPU for short sequences; prefix caching often finds its prompt still there).
Since the oldest sequence always runs and waiting ones are admitted in order, every request
finishes: none starves.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from tokenmill.deploy.serve.block_manager import BlockManager
from tokenmill.deploy.serve.sequence import Sequence, Status


@dataclass
class Step:
    """The plan of one step: each scheduled sequence reads `num_tokens[i]` tokens from its `num_computed`."""

    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # blocks to copy first (copy-on-write)
    preempted: list[Sequence] = field(default_factory=list)

    def add(self, seq: Sequence, n: int, copies: list[tuple[int, int]]) -> None:
        self.seqs.append(seq)
        self.num_tokens.append(n)
        self.copies += copies

    def remove(self, seq: Sequence) -> int:
        i = self.seqs.index(seq)
        self.seqs.pop(i)
        return self.num_tokens.pop(i)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 64, max_num_batched_tokens: int = 1024) -> None:
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError(
                f"max_num_batched_tokens ({max_num_batched_tokens}) must be at least max_num_seqs "
                f"({max_num_seqs}), or running sequences could not all decode in one step"
            )
        self.blocks = block_manager
        self.max_num_seqs, self.max_num_batched_tokens = max_num_seqs, max_num_batched_tokens
        # A few blocks kept free at admission, so that a new sequence is not preempted at once
        # by the running ones growing into their next block (vLLM's watermark, 1%).
        self.watermark = max(1, block_manager.num_usable_blocks // 100)
        self.waiting: list[Sequence] = []  # by arrival: a preempted sequence goes back to its place
        self.running: list[Sequence] = []  # by arrival
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        bisect.insort(self.waiting, seq, key=lambda s: s.order)

    def add_running(self, seq: Sequence) -> None:
        """A sequence forked from a running one: it already has its blocks."""
        seq.status = Status.RUNNING
        bisect.insort(self.running, seq, key=lambda s: s.order)

    def remove(self, seq: Sequence) -> None:
        """Take out a finished or aborted sequence and give back its blocks."""
        for queue in (self.running, self.waiting):
            if seq in queue:
                queue.remove(seq)
        self.blocks.free(seq.seq_id)

    def has_unfinished(self) -> bool:
        return bool(self.running or self.waiting)

    def schedule(self) -> Step:
        step, budget = Step(), self.max_num_batched_tokens
        for seq in sorted(self.running, key=lambda s: (s.num_uncomputed > 1, s.order)):
            if seq.status is not Status.RUNNING or budget == 0:
                continue  # preempted a moment ago, or no budget left: next step
            n = min(seq.num_uncomputed, budget)
            while (copies := self.blocks.append_slots(seq.seq_id, seq.num_computed, n)) is None:
                victim = self.running[-1]
                if victim in step.seqs:
                    budget += step.remove(victim)
                self._preempt(victim, step)
                if victim is seq:
                    break
            if copies is not None:
                step.add(seq, n, copies)
                budget -= n
        if step.preempted:
            return step  # blocks are short: admit nobody this step
        while self.waiting and budget > 0:
            seq = self.waiting[0]
            request = seq.request
            width = request.params.n if not request.forked else 1  # the prompt forks into n sequences
            if len(self.running) + width > self.max_num_seqs:
                break
            hits = self.blocks.lookup(seq.token_ids)
            computed = len(hits) * self.blocks.block_size
            n = min(len(seq.token_ids) - computed, budget)
            reserve = self.watermark if self.running else 0  # alone, a sequence may fill the pool
            if not self.blocks.can_admit(hits, computed + n, reserve):
                break
            self.blocks.admit(seq.seq_id, seq.token_ids, hits, computed + n)
            seq.num_computed = computed
            self.waiting.pop(0)
            self.add_running(seq)
            step.add(seq, n, [])
            budget -= n
        return step

    def _preempt(self, seq: Sequence, step: Step) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.seq_id)
        seq.num_computed = 0
        self.add(seq)
        step.preempted.append(seq)
        self.num_preemptions += 1
