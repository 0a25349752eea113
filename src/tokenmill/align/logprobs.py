"""Log-probabilities of the tokens a model is asked to produce: the quantity SFT, DPO and PPO share.

    lp = token_logprobs(model, ids, labels_mask)      # (batch, seq-1): log p(ids[:, t] | ids[:, :t]) for t >= 1
    seq = lp.sum(-1)                                   # (batch,): the sum over the labelled tokens

Only the labelled positions go through the output head: with a large vocabulary the head is
most of a small model's compute, and the prompt's logits are never needed (TRL's fused LM head
makes the same saving).
"""

from __future__ import annotations

import torch

from tokenmill.model.transformer import Transformer


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] in float32, as logit − logsumexp (no (…, vocab) log-softmax copy)."""
    logits = logits.float()
    return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)


def labelled_logits(
    model: Transformer,
    input_ids: torch.Tensor,
    labels_mask: torch.Tensor,
    segment_ids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits, targets, where): the logits (n, vocab) that predict the n labelled tokens
    labels[:, t] (t >= 1, labels_mask[:, t] == 1; labels default to input_ids), those tokens, and
    the (batch, seq-1) mask of where they are."""
    hidden, _ = model.hidden_states(input_ids, segment_ids=segment_ids)
    where = labels_mask[:, 1:].bool()
    labels = input_ids if labels is None else labels
    return model.head(hidden[:, :-1][where]), labels[:, 1:][where], where


def token_logprobs(
    model: Transformer,
    input_ids: torch.Tensor,
    labels_mask: torch.Tensor,
    segment_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(batch, seq-1): log p(token_t | tokens <t) for t >= 1, zero where labels_mask[:, t] == 0.

    Right padding needs no attention mask: a causal model never looks at the pad tokens after a
    position, and their own predictions are masked out. `segment_ids` are for packed rows."""
    logits, targets, where = labelled_logits(model, input_ids, labels_mask, segment_ids)
    logprobs = gather_logprobs(logits, targets)
    # masked_scatter keeps the result attached to the graph even when nothing is labelled.
    return logprobs.new_zeros(where.shape).masked_scatter(where, logprobs)
