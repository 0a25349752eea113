"""`QuantLinear`: a linear layer whose weight is stored as INT8 or packed INT4 codes, scales and zero points.

Buffers (what the safetensors file holds, under the layer's name):

    qweight  int8 (out, in): code - 128                 8 bits
             uint8 (out, ceil(in / 2)): two codes a byte  4 bits (see pack.py)
    scales   float16 (out, n_groups)
    qzeros   like qweight's unpacked codes, (out, n_groups); asymmetric only (symmetric: 2^(bits-1))
    bias     the layer's bias, unquantized, when it has one

and the weight is (code - zero) · scale. On the CPU the layer computes with PyTorch's quantized
kernels instead of dequantizing, for any number of input rows:

- INT8 per channel runs as W8A8: each input row is quantized to int8 with its own scale (dynamic,
  per token) and multiplied by the int8 weight in `torch._int_mm` (int8 × int8 → int32, VNNI).
- INT4 in groups of 32..256 runs weight-only through `_weight_int4pack_mm_for_cpu` in bfloat16
  (tinygemm's layout, repacked from the stored codes when the folder is loaded; in float32 the
  same kernel is slower than FP32).

Everything else, and everything on CUDA, dequantizes the weight on the fly and multiplies with
`F.linear`, so that memory holds only the codes between calls. That path is the reference the
kernels are tested against (`use_kernels = False`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenmill.model.quant.grid import SCALE_DTYPE, Scheme, dequantize_matrix
from tokenmill.model.quant.pack import pack_int4, unpack_int4

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT4_KERNEL_DTYPE = torch.bfloat16
INT4_KERNEL_GROUPS = (32, 64, 128, 256)


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
        self._kernel: tuple | None = None  # (key, derived tensors) of the CPU kernel, see prepare_kernel

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

    def kernel(self) -> str | None:
        """The CPU kernel this layer's format runs through ("int8_w8a8", "int4"), or None (dequantize)."""
        if self.scheme.bits == 8:
            return "int8_w8a8" if self.scales.shape[1] == 1 else None
        # tinygemm's CPU layout: output rows in tiles of 16, groups of 32..256 that divide the row.
        fits = self.out_features % 16 == 0 and self.in_features % self.group == 0 and self.group in INT4_KERNEL_GROUPS
        return "int4" if fits else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_kernels and x.device.type == "cpu" and x.dtype in KERNEL_DTYPES and self.kernel() is not None:
            x2 = x.reshape(-1, self.in_features)
            y = self._w8a8(x2) if self.scheme.bits == 8 else self._int4(x2)
            if self.bias is not None:
                y = y + self.bias
            return y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return F.linear(x, self.dequantize(x.dtype), self.bias)

    def prepare_kernel(self) -> tuple:
        """The tensors the CPU kernel needs, derived once from the stored codes (and again only when
        the buffers are replaced, e.g. by loading another state)."""
        key = (self.qweight.data_ptr(), self.scales.data_ptr(), self.qweight.device)
        if self._kernel is not None and self._kernel[0] == key:
            return self._kernel[1]
        scale = self.scales.float()
        if self.scheme.bits == 8:
            # w = (q - z)·s with q the stored int8 (code - 128) and z the zero - 128 (0 when symmetric).
            zero = None if self.scheme.symmetric else self.qzeros[:, 0].to(torch.int32)
            derived = (scale[:, 0], zero)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(self.codes().to(torch.int32), 2)
            # tinygemm computes (code - 8)·scale + offset: our (code - zero)·scale has offset (8 - zero)·scale.
            offset = (8 - self.zeros().float()) * scale
            scale_and_zero = torch.stack([scale.t(), offset.t()], dim=-1).to(INT4_KERNEL_DTYPE).contiguous()
            derived = (packed, scale_and_zero)
        self._kernel = (key, derived)
        return derived

    def _w8a8(self, x: torch.Tensor) -> torch.Tensor:
        """x (rows, in) times the weight, with x quantized per row to int8 (symmetric, dynamic).
        `torch._int_mm` on the CPU takes any number of rows (CUDA's needs more than 16)."""
        w_scale, w_zero = self.prepare_kernel()
        x = x.float()
        x_scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / 127
        xq = torch.round(x / x_scale).clamp(-127, 127).to(torch.int8)
        acc = torch._int_mm(xq, self.qweight.t())
        if w_zero is not None:
            # Σ xq·(q - z) = Σ xq·q - z·Σ xq, all in int32.
            acc = acc - xq.sum(-1, keepdim=True, dtype=torch.int32) * w_zero
        return acc.float() * x_scale * w_scale

    def _int4(self, x: torch.Tensor) -> torch.Tensor:
        packed, scale_and_zero = self.prepare_kernel()
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(INT4_KERNEL_DTYPE), packed, self.group, scale_and_zero)

    def extra_repr(self) -> str:
        s = self.scheme
        kind = "per-channel" if s.group_size is None else f"group {self.group}"
        return f"in={self.in_features}, out={self.out_features}, int{s.bits}, {kind}, {'sym' if s.symmetric else 'asym'}"
