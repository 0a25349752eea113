"""The quantization grid of a weight matrix, and dequantization: what a stored code stands for.

A weight row is cut into groups of `group_size` input columns (one group per row: per-channel).
Each group has a scale and a zero point, and a weight is stored as an unsigned code of `bits`
bits:

    w ≈ (code - zero) · scale

A symmetric grid has zero = 2^(bits-1) for every group, so only the scales are stored; an
asymmetric one stores a zero point per group. Scales are stored in float16, as GPTQ and AWQ
checkpoints do. How the codes are chosen is the quantizer's business (tokenmill.deploy.quant).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

SCALE_DTYPE = torch.float16


@dataclass(frozen=True)
class Scheme:
    """How a weight matrix is quantized: 8 or 4 bits, group size (None: per output channel), symmetric or not."""

    bits: int
    group_size: int | None = 128
    symmetric: bool = True

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.group_size is not None and self.group_size < 1:
            raise ValueError(f"group_size must be positive or None (per-channel), got {self.group_size}")

    @property
    def max_code(self) -> int:
        return 2**self.bits - 1

    def group(self, in_features: int) -> int:
        """The group size used on a layer of `in_features` inputs (a group never exceeds a row)."""
        return in_features if self.group_size is None else min(self.group_size, in_features)

    def n_groups(self, in_features: int) -> int:
        return math.ceil(in_features / self.group(in_features))


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(code - zero) · scale in float32: the one formula every quantized path uses."""
    return (codes.float() - zero.float()) * scale.float()


def expand_groups(t: torch.Tensor, group: int, in_features: int) -> torch.Tensor:
    """Per-group values (out, n_groups) repeated over the columns of each group: (out, in_features)."""
    return t.repeat_interleave(group, dim=1)[:, :in_features]


def dequantize_matrix(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """The float32 weight matrix that codes (out, in) and per-group scales and zeros stand for."""
    out, n = codes.shape
    group = scheme.group(n)
    if n % group:
        return dequantize(codes, expand_groups(scale, group, n), expand_groups(zero, group, n))
    # Broadcast each group's scale and zero over a view instead of materialising them per weight.
    grouped = dequantize(codes.view(out, n // group, group), scale[..., None], zero[..., None])
    return grouped.view(out, n)
