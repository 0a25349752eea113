"""Scoring text: the log-probability a model gives each token of a sequence after the tokens
before it, all sequences of a batch in one forward pass. The one home of log-likelihoods for
evaluation, in process (tokenmill.eval) and served (a completion's `echo` with `logprobs`).

    scores = score(model, [[bos, 5, 9, 2], [bos, 7]], top=1)
    scores[0].logprobs          # log p(5 | bos), log p(9 | bos 5), log p(2 | bos 5 9)
    scores[0].greedy            # whether each of those tokens was the most likely one

Rows are right-padded: a causal model's prediction at a position never reads the padding after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokenmill.errors import TokenmillError
from tokenmill.model.transformer import Transformer


@dataclass
class Scores:
    """Per token of a sequence after its first: its log-probability, whether it was the most
    likely token there, and the `top` most likely tokens there with theirs."""

    logprobs: list[float]
    greedy: list[bool]
    top: list[list[tuple[int, float]]]


@torch.no_grad()
def score(model: Transformer, sequences: Sequence[Sequence[int]], top: int = 0) -> list[Scores]:
    """The scores of each sequence's tokens 1..n-1 (the model reads tokens 0..n-2 of each, so a
    sequence may be one token longer than the context)."""
    if not sequences or any(len(s) < 2 for s in sequences):
        raise TokenmillError("scoring needs sequences of at least two tokens (a first token to condition on)")
    longest = max(len(s) for s in sequences) - 1
    if longest > model.config.context_length:
        raise TokenmillError(f"a sequence of {longest + 1} tokens is longer than the model's context of "
                             f"{model.config.context_length} plus the token it predicts")
    device = next(model.parameters()).device
    inputs = torch.zeros(len(sequences), longest, dtype=torch.long, device=device)
    for i, s in enumerate(sequences):
        inputs[i, : len(s) - 1] = torch.tensor(s[:-1], dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    logp = model(inputs).float().log_softmax(-1)
    model.train(was_training)
    out = []
    for i, s in enumerate(sequences):
        rows = logp[i, : len(s) - 1]
        targets = torch.tensor(s[1:], dtype=torch.long, device=device)
        chosen = rows.gather(-1, targets[:, None])[:, 0]
        best = rows.max(-1).values
        tops = [[] for _ in range(len(s) - 1)]
        if top:
            values, ids = rows.topk(top, dim=-1)
            tops = [list(zip(i_.tolist(), v_.tolist())) for i_, v_ in zip(ids, values)]
        out.append(Scores(chosen.tolist(), (chosen >= best).tolist(), tops))
    return out
