"""Where a token is: sinusoidal tables, RoPE frequencies (with context-extension scaling), ALiBi slopes.

RoPE follows the rotate-half layout of Hugging Face `transformers` (dimension i pairs with
i + d/2), and its scaled variants compute their frequencies exactly as `transformers` does, so
that converted checkpoints give the same logits.
"""

from __future__ import annotations

import math

import torch

from tokenmill.model.config import ModelConfig


def sinusoidal(positions: torch.Tensor, d_model: int) -> torch.Tensor:
    """Vaswani et al. (2017) §3.5: PE(p, 2i) = sin(p / 10000^(2i/d)), PE(p, 2i+1) = cos(...)."""
    inv_freq = 1.0 / (10_000 ** (torch.arange(0, d_model, 2, device=positions.device, dtype=torch.float32) / d_model))
    angles = positions[..., None].float() * inv_freq
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)


def rope_frequencies(config: ModelConfig, local: bool = False) -> tuple[torch.Tensor, float]:
    """Inverse frequencies of the rotated dimensions and the factor applied to cos and sin.

    `local`: those of the sliding-window layers when they have a base of their own (Gemma 3),
    which context extension leaves alone.
    """
    dim, base, factor = config.rotary_dim, config.rope_theta, config.rope_factor
    exponents = torch.arange(0, dim, 2, dtype=torch.float32) / dim
    if local:
        return 1.0 / (config.rope_local_theta**exponents), 1.0
    if config.rope_scaling == "ntk":
        # NTK-aware scaling (bloc97, 2023): raise the base so the lowest frequency stretches by
        # `factor` while the highest stays; the same as a larger rope_theta.
        base = base * factor ** (dim / (dim - 2))
    inv_freq = 1.0 / (base**exponents)
    if config.rope_scaling == "linear":
        # Position interpolation (Chen et al., 2023): positions are divided by the factor.
        return inv_freq / factor, 1.0
    if config.rope_scaling == "yarn":
        return _yarn(inv_freq, dim, base, factor, config.rope_original_context)
    if config.rope_scaling == "llama3":
        return _llama3(inv_freq, factor, config.rope_low_freq_factor, config.rope_high_freq_factor,
                       config.rope_original_context), 1.0
    return inv_freq, 1.0


def _llama3(inv_freq: torch.Tensor, factor: float, low: float, high: float, original: int) -> torch.Tensor:
    """Llama 3.1's frequency rescaling, as `transformers` computes it.

    Wavelengths longer than original / low (dimensions that never completed a turn in
    pre-training) are interpolated by the factor, those shorter than original / high are kept,
    and the band between is blended by how many turns it made over the original context.
    """
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    between = ~(wavelen < original / high) & ~(wavelen > original / low)
    return torch.where(between, blended, scaled)


def _yarn(inv_freq: torch.Tensor, dim: int, base: float, factor: float, original: int) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al., 2023) with its default β_fast = 32, β_slow = 1, as `transformers` computes it.

    Dimensions that turn fewer than β_slow times over the original context are interpolated,
    those that turn more than β_fast times are kept, and a linear ramp blends the ones between.
    """

    def dim_of(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(dim_of(32)), 0)
    high = min(math.ceil(dim_of(1)), dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp
    inv_freq = (inv_freq / factor) * (1 - keep) + inv_freq * keep
    return inv_freq, 0.1 * math.log(factor) + 1.0


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, scale: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for `positions` (..., T), shaped (..., T, rotary_dim), computed in float32."""
    freqs = positions[..., None].float() * inv_freq
    angles = torch.cat((freqs, freqs), dim=-1)
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first cos.shape[-1] dimensions of x (batch, heads, T, head_dim); pass the rest."""
    d = cos.shape[-1]
    rotated, rest = x[..., :d], x[..., d:]
    rotated = rotated * cos + _rotate_half(rotated) * sin
    return torch.cat((rotated, rest), dim=-1) if rest.shape[-1] else rotated


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Press et al. (2022): the geometric sequence 2^(-8/n), 2^(-16/n), ...; for a head count that is
    not a power of two, the 2^k slopes of the nearest power below plus every other slope of 2·2^k."""
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = [2 ** (-8 * (i + 1) / closest) for i in range(closest)]
    if closest != n_heads:
        extra = [2 ** (-8 * (i + 1) / (2 * closest)) for i in range(0, 2 * (n_heads - closest), 2)]
        slopes += extra
    return torch.tensor(slopes, dtype=torch.float32)
