"""The learning rate: linear warmup, cosine decay to a floor, then a constant tail.

    lr(s) = peak · (s + 1) / warmup                                  s < warmup
    lr(s) = floor + ½ (peak − floor) (1 + cos(π (s − warmup) / (end − warmup)))   warmup <= s < end
    lr(s) = floor = min_lr_ratio · peak                               s >= end

as in nanoGPT and Chinchilla (Hoffmann et al., 2022, which decays to 10% of the peak). `s` is
the 0-based index of the optimizer step about to be taken.
"""

from __future__ import annotations

import math

from tokenmill.pretrain.config import OptimConfig


def decay_end_step(config: OptimConfig, steps: int) -> int:
    """The step where the cosine reaches its floor: a fraction of the run (<= 1) or a step (> 1)."""
    end = round(config.decay_end * steps) if config.decay_end <= 1 else int(config.decay_end)
    return max(end, config.warmup_steps)


def lr_at(step: int, config: OptimConfig, steps: int) -> float:
    peak, warmup = config.lr, config.warmup_steps
    floor = config.min_lr_ratio * peak
    if step < warmup:
        return peak * (step + 1) / warmup
    end = decay_end_step(config, steps)
    if step >= end:
        return floor
    progress = (step - warmup) / (end - warmup)
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))
