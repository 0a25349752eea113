"""The quantization grid, and round-to-nearest (RTN) onto it: the baseline that GPTQ and AWQ improve on.

A weight row is cut into groups of `group_size` input columns (one group per row: per-channel).
Each group has a scale and a zero point, and a weight is stored as an unsigned code of `bits`
bits:

    w ≈ (code - zero) · scale

Symmetric: zero = 2^(bits-1) and scale = max|w| / (2^(bits-1) - 1), so the grid is ±max|w|
and 0 is exact (the lowest code is left unused to keep the grid symmetric). Asymmetric:
scale = (max - min) / (2^bits - 1) over the group's range widened to include 0, and zero =
round(-min / scale), as in GPTQ's quantizer. Scales are stored in float16 (as GPTQ and AWQ
checkpoints do) and rounded up to it before the codes are chosen, so that the codes fit the
stored scale and max|w| never clips.
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


def find_params(w: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float16) and zero (uint8) of each group along the last axis of `w` (..., k)."""
    w = w.float()
    if scheme.symmetric:
        half = 2 ** (scheme.bits - 1)
        scale = w.abs().amax(-1) / (half - 1)
        zero = torch.full_like(scale, half)
    else:
        lo, hi = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
        scale = (hi - lo) / scheme.max_code
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero group: any scale is exact
    scale16 = scale.to(SCALE_DTYPE)
    scale16 = torch.where(scale16.float() < scale, torch.nextafter(scale16, torch.full_like(scale16, math.inf)), scale16)
    scale16 = scale16.clamp(min=torch.finfo(SCALE_DTYPE).smallest_normal)
    if not scheme.symmetric:
        zero = torch.round(-lo / scale16.float()).clamp(0, scheme.max_code)
    return scale16, zero.to(torch.uint8)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """Codes (uint8) of `w` on the grid of `scale` and `zero` (broadcast against `w`)."""
    q = torch.round(w.float() / scale.float()) + zero.float()
    return q.clamp(0, scheme.max_code).to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """(code - zero) · scale in float32: the one formula every path of this package uses."""
    return (codes.float() - zero.float()) * scale.float()


def expand_groups(t: torch.Tensor, group: int, in_features: int) -> torch.Tensor:
    """Per-group values (out, n_groups) repeated over the columns of each group: (out, in_features)."""
    return t.repeat_interleave(group, dim=1)[:, :in_features]


def grid_params(w: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zeros (out, n_groups) of a weight matrix (out, in)."""
    out, n = w.shape
    group, n_groups = scheme.group(n), scheme.n_groups(n)
    # A short last group is padded with zeros, which change neither grid: both always cover 0.
    padded = torch.nn.functional.pad(w.float(), (0, n_groups * group - n))
    return find_params(padded.view(out, n_groups, group), scheme)


def rtn(w: torch.Tensor, scheme: Scheme) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest: codes (out, in) uint8, scales (out, n_groups) float16, zeros (out, n_groups) uint8."""
    scale, zero = grid_params(w, scheme)
    group = scheme.group(w.shape[1])
    codes = quantize(w, expand_groups(scale, group, w.shape[1]), expand_groups(zero, group, w.shape[1]), scheme)
    return codes, scale, zero


def dequantize_matrix(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """The float32 weight matrix that codes (out, in) and per-group scales and zeros stand for."""
    out, n = codes.shape
    group = scheme.group(n)
    if n % group:
        return dequantize(codes, expand_groups(scale, group, n), expand_groups(zero, group, n))
    # Broadcast each group's scale and zero over a view instead of materialising them per weight.
    grouped = dequantize(codes.view(out, n // group, group), scale[..., None], zero[..., None])
    return grouped.view(out, n)


def fake_quantize(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """RTN and back: what the weight becomes, in `w`'s dtype (for searches that only need the values)."""
    return dequantize_matrix(*rtn(w, scheme), scheme).to(w.dtype)
