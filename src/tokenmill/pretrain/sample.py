"""A sample from the model at each evaluation: greedy, or top-k (Fan et al., 2018)."""

from __future__ import annotations

import torch
import torch.nn as nn


@torch.no_grad()
def generate(
    model: nn.Module, prompt: list[int], n_tokens: int, context: int, top_k: int | None, seed: int, device: torch.device, amp
) -> list[int]:
    """`n_tokens` new ids after `prompt`. The draw has its own generator, so sampling never
    moves the training RNG (a resumed run must see the same dropout masks)."""
    generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    for _ in range(n_tokens):
        with amp():
            logits = model(ids[:, -context:])[:, -1].float()
        if top_k is None:
            token = logits.argmax(-1, keepdim=True)
        else:
            values, indices = logits.topk(min(top_k, logits.shape[-1]))
            token = indices.gather(-1, torch.multinomial(values.softmax(-1), 1, generator=generator))
        ids = torch.cat([ids, token], dim=1)
    return ids[0, len(prompt) :].tolist()
