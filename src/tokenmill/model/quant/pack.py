"""Two 4-bit codes per byte: the even column in the low nibble, the odd column in the high one.

An odd number of columns is padded with one zero nibble, which `unpack_int4` drops again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Codes 0..15 (rows, cols) -> uint8 (rows, ceil(cols / 2))."""
    if codes.dtype != torch.uint8:
        raise ValueError(f"expected uint8 codes, got {codes.dtype}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"a 4-bit code is at most 15, got {int(codes.max())}")
    codes = F.pad(codes, (0, codes.shape[-1] % 2))
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """uint8 (rows, ceil(cols / 2)) -> codes 0..15 (rows, cols)."""
    if packed.shape[-1] != (cols + 1) // 2:
        raise ValueError(f"{packed.shape[-1]} bytes per row cannot hold {cols} 4-bit codes")
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)
    return codes[..., :cols]
