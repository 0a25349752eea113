"""The loss-spike guard (as in PaLM, Chowdhery et al., 2022, §5.1): when the loss jumps past a
factor of its running mean, go back to the last golden checkpoint and skip the batches around
the spike. A loss or a gradient norm that is not finite is always a spike: one NaN gradient
applied would make every weight and both AdamW moments NaN for good."""

from __future__ import annotations

import math

from tokenmill.pretrain.config import PretrainConfig


def is_spike(loss: float, recent: list[float], config: PretrainConfig, grad_norm: float = 0.0) -> bool:
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        return True
    if config.spike_factor is None or len(recent) < config.spike_window:
        return False
    return loss > config.spike_factor * (sum(recent) / len(recent))


def remember(recent: list[float], loss: float, window: int) -> None:
    recent.append(loss)
    del recent[:-window]


def skip_range(spike_position: int, floor: int, config: PretrainConfig) -> list[int]:
    """The batch positions to skip: `spike_skip` of them ending with the one that spiked, none
    before `floor` (the golden checkpoint's position: those trained the weights we return to)."""
    return [max(spike_position - config.spike_skip + 1, floor), spike_position]
