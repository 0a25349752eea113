"""Batched sampling through the KV cache: the one generation path of pre-training and SFT
samples, PPO rollouts, win rates, constitutional AI and the quantization report's decoding speed.

    out = generate(model, prompts, max_new_tokens=48, temperature=1.0, stop_ids=tok.stop_ids)
    out.sequences[i]            # prompt i, its response, then pad ids
    out.response_ids(i)         # the response alone (its stop token included)

Prompts of different lengths share one batch without left padding: each row keeps positions
0, 1, 2, ... of its own tokens. The batch is right-padded for the prefill; a shorter row's
first new token then goes to the position right after its prompt, overwriting the pad's slot
in the cache, and the causal mask over positions hides the slots it has not rewritten yet. So a
row's sequence is exactly what one forward pass over `sequences[i]` sees, which is how PPO
scores it afterwards.

Given a `generator`, the draws come from it alone and never move torch's global RNG, so a
sample taken during training leaves the training's random stream (dropout, data order) as it was.
Autocast, when wanted, is the caller's: `with torch.autocast(...): generate(...)`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from tokenmill.errors import TokenmillError
from tokenmill.model.kv_cache import KVCache
from tokenmill.model.sampling import SamplingParams, warp
from tokenmill.model.transformer import Transformer


@dataclass
class Generation:
    """A batch of prompts and their sampled responses, right-padded to one length."""

    sequences: torch.Tensor  # (batch, length) prompt, response, then pad
    prompt_lengths: torch.Tensor  # (batch,)
    response_lengths: torch.Tensor  # (batch,) the stop token, when one was drawn, included
    logprobs: torch.Tensor  # (batch, length) log p(token) under the model (raw logits) at response tokens, else 0
    stopped: torch.Tensor  # (batch,) True where the response ended with a stop token

    @property
    def attention_mask(self) -> torch.Tensor:
        """1 on prompt and response tokens, 0 on the padding after them."""
        end = (self.prompt_lengths + self.response_lengths)[:, None]
        return (torch.arange(self.sequences.shape[1], device=end.device) < end).long()

    @property
    def response_mask(self) -> torch.Tensor:
        """1 on response tokens only."""
        index = torch.arange(self.sequences.shape[1], device=self.prompt_lengths.device)
        start = self.prompt_lengths[:, None]
        return ((index >= start) & (index < start + self.response_lengths[:, None])).long()

    def response_ids(self, i: int, strip_stop: bool = False) -> list[int]:
        start, n = int(self.prompt_lengths[i]), int(self.response_lengths[i])
        if strip_stop and bool(self.stopped[i]):
            n -= 1
        return self.sequences[i, start : start + n].tolist()


@torch.no_grad()
def generate(
    model: Transformer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_ids: Collection[int] = (),
    pad_id: int = 0,
    generator: torch.Generator | None = None,
) -> Generation:
    """Up to `max_new_tokens` sampled after each prompt, all rows decoded together; a row stops at
    its first token in `stop_ids`. Temperature 0 is greedy; top-k 0 and top-p 1 cut nothing."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise TokenmillError("generate needs at least one prompt, and no empty prompt")
    params = SamplingParams(max_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    device = next(model.parameters()).device
    batch = len(prompts)
    prompt_lengths = torch.tensor([len(p) for p in prompts], device=device)
    longest = int(prompt_lengths.max())
    total = longest + max_new_tokens
    if total > model.config.context_length:
        raise TokenmillError(
            f"a prompt of {longest} tokens and {max_new_tokens} new tokens do not fit the model's context of "
            f"{model.config.context_length}; shorten the prompts or generate fewer tokens"
        )
    sequences = torch.full((batch, total), pad_id, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        sequences[i, : len(p)] = torch.tensor(p, dtype=torch.long, device=device)
    logprobs = torch.zeros(batch, total, device=device)
    response_lengths = torch.zeros(batch, dtype=torch.long, device=device)
    stopped = torch.zeros(batch, dtype=torch.bool, device=device)
    stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=device)
    can_stop = len(stops) > 0  # without stop ids, no step waits on the device to ask whether all rows stopped
    rows = torch.arange(batch, device=device)

    was_training = model.training
    model.eval()
    cache = KVCache(model.config, batch, total)
    logits = model(sequences[:, :longest], cache=cache)[rows, prompt_lengths - 1].float()
    position = prompt_lengths.clone()  # where each row's next token goes
    for step in range(max_new_tokens):
        if params.greedy:
            token = logits.argmax(-1)
        else:
            # One draw per row by the exponential race (vLLM's way): argmax p/E with E ~ Exp(1) is a
            # sample from p, and much cheaper than torch.multinomial over a large vocabulary.
            probs = warp(logits, params).softmax(-1)
            token = (probs / torch.empty_like(probs).exponential_(generator=generator)).argmax(-1)
        live = ~stopped
        token = torch.where(live, token, pad_id)
        sequences[rows, position] = token
        logprobs[rows, position] = torch.where(live, logits.log_softmax(-1)[rows, token], 0.0)
        response_lengths += live.long()
        stopped |= live & torch.isin(token, stops)
        if step == max_new_tokens - 1 or (can_stop and bool(stopped.all())):
            break
        logits = model(token[:, None], positions=position[:, None], cache=cache)[:, -1].float()
        position += 1
    model.train(was_training)
    return Generation(sequences, prompt_lengths, response_lengths, logprobs, stopped)


def fit_context(prompt: Sequence[int], max_new_tokens: int, context: int) -> tuple[list[int], int]:
    """`prompt` and a number of new tokens that fit `context` together: the prompt's last
    `context - 1` tokens at most, then as many new tokens as still fit (at most `max_new_tokens`).
    Samples stop where the context ends rather than slide a window past it."""
    if context < 2:
        raise TokenmillError(f"a context of {context} tokens leaves no room for a prompt and a new token")
    kept = list(prompt[-(context - 1) :])
    return kept, min(max_new_tokens, context - len(kept))
