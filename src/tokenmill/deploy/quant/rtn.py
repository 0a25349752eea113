"""Round-to-nearest (RTN) onto the quantization grid: the baseline that GPTQ and AWQ improve on.

The grid, w ≈ (code - zero) · scale per group of input columns, is the model package's
(tokenmill.model.quant.grid); this module chooses its scales and zeros and rounds onto it.
Symmetric: zero = 2^(bits-1) and scale = max|w| / (2^(bits-1) - 1), so the grid is ±max|w|
and 0 is exact (the lowest code is left unused to keep the grid symmetric). Asymmetric:
scale = (max - min) / (2^bits - 1) over the group's range widened to include 0, and zero =
round(-min / scale), as in GPTQ's quantizer. Scales are rounded up to float16, the stored
dtype, before the codes are chosen, so that the codes fit the stored scale and max|w| never
clips.
"""

from __future__ import annotations

import math

import torch

from tokenmill.model.quant.grid import SCALE_DTYPE, Scheme, dequantize_matrix, expand_groups


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


def fake_quantize(w: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """RTN and back: what the weight becomes, in `w`'s dtype (for searches that only need the values)."""
    return dequantize_matrix(*rtn(w, scheme), scheme).to(w.dtype)
