"""`QuantLinear`: a linear layer whose weight is stored as INT8 or packed INT4 codes, scales and zero points.

Buffers (what the safetensors file holds, under the layer's name):

    qweight  int8 (out, in): code - 128                 8 bits
             uint8 (out, ceil(in / 2)): two codes a byte  4 bits (see pack.py)
    scales   float16 (out, n_groups)
    qzeros   like qweight's unpacked codes, (out, n_groups); asymmetric only (symmetric: 2^(bits-1))
    bias     the layer's bias, unquantized, when it has one

and the weight is (code - zero) · scale. On the CPU a single input row (decoding one
sequence) goes through PyTorch's weight-only kernels where the shapes allow: `_weight_int8pack_mm`
(INT8 per channel) and `_weight_int4pack_mm_for_cpu` (INT4, tinygemm's layout, built once on
first use). Everything else, and everything on CUDA, dequantizes the weight on the fly and
multiplies with `F.linear`, so that memory holds only the codes between calls.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenmill.model.quant.grid import SCALE_DTYPE, Scheme, dequantize_matrix
from tokenmill.model.quant.pack import pack_int4, unpack_int4

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# PyTorch's CPU weight-only kernels are matrix-vector products: faster than dequantizing for one
# input row (decoding one sequence), several times slower for a batch (benchmarks/quantize.py).
KERNEL_MAX_ROWS = 1


class QuantLinear(nn.Module):
    # Class-wide switch, so that tests (and benchmarks) can run both sides of the kernel choice.
    use_kernels = True

    def __init__(
        self, in_features: int, out_features: int, scheme: Scheme, bias: bool = False, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        self.group = scheme.group(in_features)
        n_groups = scheme.n_groups(in_features)
        if scheme.bits == 8:
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        else:
            self.register_buffer("qweight", torch.zeros(out_features, (in_features + 1) // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales", torch.ones(out_features, n_groups, dtype=SCALE_DTYPE, device=device))
        if not scheme.symmetric:
            zero_dtype = torch.int8 if scheme.bits == 8 else torch.uint8
            self.register_buffer("qzeros", torch.zeros(out_features, n_groups, dtype=zero_dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None
        self._kernel: tuple | None = None  # (key, derived tensors) of the CPU INT4 kernel

    @classmethod
    def from_codes(
        cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, scheme: Scheme, bias: torch.Tensor | None = None
    ) -> QuantLinear:
        """A layer from unsigned codes (out, in), float16 scales and uint8 zeros (out, n_groups)."""
        out, n = codes.shape
        layer = cls(n, out, scheme, bias=bias is not None, device=codes.device)
        if scheme.bits == 8:
            layer.qweight.copy_((codes.to(torch.int16) - 128).to(torch.int8))
        else:
            layer.qweight.copy_(pack_int4(codes.to(torch.uint8)))
        layer.scales.copy_(scales)
        if not scheme.symmetric:
            layer.qzeros.copy_(zeros if scheme.bits == 4 else (zeros.to(torch.int16) - 128).to(torch.int8))
        if bias is not None:
            layer.bias.data.copy_(bias.detach())
        return layer

    def codes(self) -> torch.Tensor:
        """Unsigned codes (out, in), uint8."""
        if self.scheme.bits == 8:
            return (self.qweight.to(torch.int16) + 128).to(torch.uint8)
        return unpack_int4(self.qweight, self.in_features)

    def zeros(self) -> torch.Tensor:
        """Zero points (out, n_groups), uint8."""
        if self.scheme.symmetric:
            return torch.full_like(self.scales, 2 ** (self.scheme.bits - 1), dtype=torch.uint8)
        if self.scheme.bits == 8:
            return (self.qzeros.to(torch.int16) + 128).to(torch.uint8)
        return self.qzeros

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight (out, in) these codes stand for."""
        if self.scheme.bits == 8:  # (code - 128) - (zero - 128), straight from the stored int8
            zeros = torch.zeros_like(self.scales, dtype=torch.int8) if self.scheme.symmetric else self.qzeros
            return dequantize_matrix(self.qweight, self.scales, zeros, self.scheme).to(dtype)
        return dequantize_matrix(self.codes(), self.scales, self.zeros(), self.scheme).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if self.use_kernels and rows <= KERNEL_MAX_ROWS and x.device.type == "cpu" and x.dtype in KERNEL_DTYPES:
            if self.scheme.bits == 8 and self.scales.shape[1] == 1:
                return self._int8_kernel(x)
            if self.scheme.bits == 4 and self._int4_kernel_fits():
                return self._int4_kernel(x)
        return F.linear(x, self.dequantize(x.dtype), self.bias)

    def _int8_kernel(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, self.in_features)
        scale = self.scales[:, 0].to(x.dtype)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, scale)
        if not self.scheme.symmetric:
            # (q - z)·s summed against x is q·s against x, minus z·s times the sum of x.
            y = y - x2.sum(-1, keepdim=True) * (self.qzeros.to(x.dtype)[:, 0] * scale)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def _int4_kernel_fits(self) -> bool:
        # tinygemm's CPU layout: output rows in tiles of 16, groups of 32..256 that divide the row.
        return self.out_features % 16 == 0 and self.in_features % self.group == 0 and self.group in (32, 64, 128, 256)

    def _int4_kernel(self, x: torch.Tensor) -> torch.Tensor:
        key = (self.qweight.data_ptr(), self.scales.data_ptr(), x.dtype)
        if self._kernel is None or self._kernel[0] != key:
            codes = self.codes().to(torch.int32)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2)
            # tinygemm computes (code - 8)·scale + offset: our (code - zero)·scale has offset (8 - zero)·scale.
            scale = self.scales.float()
            offset = (8 - self.zeros().float()) * scale
            scale_and_zero = torch.stack([scale.t(), offset.t()], dim=-1).to(x.dtype).contiguous()
            self._kernel = (key, packed, scale_and_zero)
        _, packed, scale_and_zero = self._kernel
        x2 = x.reshape(-1, self.in_features)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, self.group, scale_and_zero)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        s = self.scheme
        kind = "per-channel" if s.group_size is None else f"group {self.group}"
        return f"in={self.in_features}, out={self.out_features}, int{s.bits}, {kind}, {'sym' if s.symmetric else 'asym'}"
