"""A request and its sequences: tokens so far, how many are in the KV cache, the text, when to stop.

A request with `n` samples starts as one sequence; when its prompt is computed it forks into
`n` sequences that share the prompt's blocks. The scheduler moves sequences, the engine
reports requests.

Text is decoded incrementally, as vLLM does: the new tokens are decoded together with a few
tokens before them, and only once they no longer end in an incomplete character, so that the
pieces put together are exactly the decoded whole. Text that might be the start of a stop
string is held back until it is known not to be one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

import torch

from tokenmill.model.sampling import SamplingParams, TokenLogprob
from tokenmill.tokenizer import Tokenizer

INCOMPLETE = "\ufffd"  # what a decoder gives for bytes that are not yet a whole character


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    arrival: int  # admission order: earlier requests are served, and never preempted, first
    arrival_time: float = field(default_factory=time.perf_counter)
    seqs: list[Sequence] = field(default_factory=list)
    forked: bool = False
    first_token_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(s.status is Status.FINISHED for s in self.seqs)


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request: Request
    index: int  # which of the request's n choices
    token_ids: list[int]
    generator: torch.Generator | None
    num_computed: int = 0  # tokens whose keys and values are in the cache
    status: Status = Status.WAITING
    finish_reason: str | None = None
    text: str = ""  # decoded output, cut at a stop string
    sent_text: int = 0  # characters of `text` already reported
    sent_tokens: int = 0  # output tokens already reported
    logprobs: list[TokenLogprob] = field(default_factory=list)
    last_token_time: float | None = None
    # incremental decoding: output tokens [prefix_offset, read_offset) were decoded last time
    prefix_offset: int = 0
    read_offset: int = 0

    @property
    def order(self) -> tuple[int, int]:
        return (self.request.arrival, self.index)

    @property
    def num_prompt(self) -> int:
        return len(self.request.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt :]

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed

    def append(self, token: int, logprob: TokenLogprob | None, tokenizer: Tokenizer, stop_ids: set[int],
               context_length: int) -> None:
        """Add a sampled token, decode it, and decide whether the sequence is finished."""
        self.token_ids.append(token)
        if logprob is not None:
            self.logprobs.append(logprob)
        output = self.output_ids
        if token in stop_ids:  # a stop token ends the text and is not part of it
            self._decode(tokenizer, output[:-1], final=True)
            if not self._cut_at_stop_string():
                self.finish("stop")
            return
        self._decode(tokenizer, output, final=False)
        if self._cut_at_stop_string():
            return
        if len(output) >= self.request.params.max_tokens or len(self.token_ids) >= context_length:
            self._decode(tokenizer, output, final=True)
            if not self._cut_at_stop_string():
                self.finish("length")

    def finish(self, reason: str) -> None:
        self.status, self.finish_reason = Status.FINISHED, reason

    def new_text(self) -> str:
        """Text not reported yet that can be reported: all of it once finished, otherwise all but
        what could still turn out to be the start of a stop string."""
        hold = 0 if self.status is Status.FINISHED else max((len(s) for s in self.request.params.stop), default=1) - 1
        end = max(self.sent_text, len(self.text) - hold)
        piece, self.sent_text = self.text[self.sent_text : end], end
        return piece

    def _decode(self, tokenizer: Tokenizer, output: list[int], final: bool) -> None:
        before = tokenizer.decode(output[self.prefix_offset : self.read_offset])
        after = tokenizer.decode(output[self.prefix_offset :])
        if len(after) > len(before) and (final or not after.endswith(INCOMPLETE)):
            self.text += after[len(before) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(output)

    def _cut_at_stop_string(self) -> bool:
        stops = self.request.params.stop
        if not stops:
            return False
        # Only the tail can hold a match that was not there before the last token.
        start = max(0, self.sent_text - max(len(s) for s in stops))
        found = [i for i in (self.text.find(s, start) for s in stops) if i >= 0]
        if not found:
            return False
        self.text = self.text[: min(found)]
        self.finish("stop")
        return True
