"""Sample answers from a policy and score them with the reward model; the win rate of one policy
over another as the reward model judges it.

    a = sample_and_score(ppo_model, rm, tokenizer, prompt_ids, max_new_tokens=48, seed=0)
    b = sample_and_score(sft_model, rm, tokenizer, prompt_ids, max_new_tokens=48, seed=0)
    win_rate(a.scores, b.scores)     # P(r(a) > r(b)) over the prompts, ties counting half
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokenmill.model.generate import generate
from tokenmill.model.transformer import Transformer


@dataclass
class Scored:
    scores: torch.Tensor  # (n,) on the CPU
    responses: list[str]
    stopped: float  # share of answers that ended with <|end|> within the token limit
    length: float  # mean answer length in tokens: a policy that games its reward model often shows here


@torch.no_grad()
def sample_and_score(
    model: Transformer,
    reward_model: torch.nn.Module,
    tokenizer,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
) -> Scored:
    """One sampled answer per prompt (chat-template ids), and the reward model's score of each."""
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    scores, responses, stopped, length = [], [], 0, 0
    for start in range(0, len(prompts), batch_size):
        out = generate(
            model, prompts[start : start + batch_size], max_new_tokens, temperature=temperature,
            stop_ids=tokenizer.stop_ids, pad_id=tokenizer.pad_id, generator=generator,
        )
        scores.append(reward_model(out.sequences, out.attention_mask).float().cpu())
        responses += [tokenizer.decode(out.response_ids(i, strip_stop=True)) for i in range(len(out.sequences))]
        stopped += int(out.stopped.sum())
        length += int(out.response_lengths.sum())
    n = max(1, len(prompts))
    return Scored(torch.cat(scores), responses, stopped / n, length / n)


def win_rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """How often a's score beats b's on the same prompt; a tie counts half."""
    return float(((a > b).float() + 0.5 * (a == b).float()).mean())
