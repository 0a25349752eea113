"""From a row of logits to the next token: the sampling parameters and the sampler, shared by
batched generation (generate.py) and the serving engine (tokenmill.deploy.serve).

The order is the usual one (transformers, vLLM): penalties on the raw logits, then the
temperature, then top-k and top-p (nucleus; Holtzman et al., 2020) cut the distribution, then
one draw from each sequence's own generator, so that a seeded request gives the same tokens
whatever else is in the batch. Temperature 0 is greedy. Log-probabilities are those of the
model's distribution (log-softmax of the raw logits), as vLLM reports them by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingParams:
    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0  # 0: no cut
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # CTRL's (Keskar et al., 2019): on every token of prompt and output
    presence_penalty: float = 0.0  # OpenAI's: on every token of the output so far
    frequency_penalty: float = 0.0  # OpenAI's: times the token's count in the output so far
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # None: none; k: the chosen token's and the k most likely
    logit_bias: dict[int, float] = field(default_factory=dict)  # OpenAI's: added to a token's logit

    def __post_init__(self) -> None:
        checks = [
            (self.n >= 1, f"n must be at least 1, got {self.n}"),
            (self.max_tokens >= 1, f"max_tokens must be at least 1, got {self.max_tokens}"),
            (self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}"),
            (self.top_k >= 0, f"top_k must be >= 0 (0 turns it off), got {self.top_k}"),
            (0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
            (-2 <= self.presence_penalty <= 2, f"presence_penalty must be in [-2, 2], got {self.presence_penalty}"),
            (-2 <= self.frequency_penalty <= 2, f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}"),
            (all(self.stop), "stop strings must not be empty"),
            (self.logprobs is None or self.logprobs >= 0, f"logprobs must be >= 0, got {self.logprobs}"),
            (all(-100 <= b <= 100 for b in self.logit_bias.values()), "logit_bias values must be in [-100, 100]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def penalised(self) -> bool:
        return (self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0
                or bool(self.logit_bias))


@dataclass
class TokenLogprob:
    """The chosen token's log-probability and the `logprobs` most likely tokens with theirs."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def apply_penalties(logits: torch.Tensor, params: SamplingParams, prompt: Sequence[int],
                    output: Sequence[int]) -> torch.Tensor:
    if params.repetition_penalty != 1:
        seen = torch.tensor(sorted(set(prompt) | set(output)), dtype=torch.long, device=logits.device)
        values = logits[seen]
        # Dividing a negative logit would raise it: CTRL multiplies those instead.
        logits[seen] = torch.where(values > 0, values / params.repetition_penalty, values * params.repetition_penalty)
    if output and (params.presence_penalty or params.frequency_penalty):
        ids, counts = torch.tensor(output, device=logits.device).unique(return_counts=True)
        logits[ids] -= params.presence_penalty + params.frequency_penalty * counts.to(logits.dtype)
    if params.logit_bias:
        ids = torch.tensor(list(params.logit_bias), dtype=torch.long, device=logits.device)
        logits[ids] += torch.tensor(list(params.logit_bias.values()), dtype=logits.dtype, device=logits.device)
    return logits


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p: the logits to draw from, cut tokens at -inf."""
    logits = logits / params.temperature
    if 0 < params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1:
        sorted_logits, order = logits.sort(descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the ones before it already reach top_p; the most likely always stays.
        drop = probs.cumsum(-1) - probs >= params.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def sample_row(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of (already penalised) float32 logits."""
    if params.greedy:
        return int(logits.argmax())
    return int(torch.multinomial(warp(logits, params).softmax(-1), 1, generator=generator))


def sample(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    prompts: Sequence[Sequence[int]],
    outputs: Sequence[Sequence[int]],
    generators: Sequence[torch.Generator | None],
) -> tuple[list[int], list[TokenLogprob | None]]:
    """The next token of each row of `logits` (rows, vocab), and its log-probabilities when asked."""
    logits = logits.float()
    tokens = [0] * len(params)
    plain = [i for i, p in enumerate(params) if p.greedy and not p.penalised]
    for i, t in zip(plain, logits[plain].argmax(-1).tolist()):  # the common case: one argmax for all
        tokens[i] = t
    for i, p in enumerate(params):
        if not (p.greedy and not p.penalised):
            row = apply_penalties(logits[i].clone(), p, prompts[i], outputs[i]) if p.penalised else logits[i]
            tokens[i] = sample_row(row, p, generators[i])
    logprobs: list[TokenLogprob | None] = [None] * len(params)
    wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
    if wanted:
        logp = logits[wanted].log_softmax(-1)
        for row, i in enumerate(wanted):
            top = logp[row].topk(params[i].logprobs)
            pairs = list(zip(top.indices.tolist(), top.values.tolist()))
            logprobs[i] = TokenLogprob(tokens[i], float(logp[row, tokens[i]]), pairs)
    return tokens, logprobs
