"""Low-rank adaptation (Hu et al., 2021): a frozen linear layer W plus a trained update
(alpha/rank)·B·A, with A (rank, in) and B (out, rank), B zero at the start so that the adapted
model begins as the model itself. Only A and B (and whatever the caller adds, such as a reward
head) get gradients: AdamW's two moments are kept for a few million numbers instead of the whole
model, which is what lets a 0.5–1B model be aligned on one 24 GB card.

The frozen W may be a plain `nn.Linear` or an INT8/INT4 `QuantLinear` (QLoRA-style: the base
weight stays in its codes). `merge_lora` folds each update into a plain linear layer, so that the
model written afterwards is an ordinary model folder; a quantized base is dequantized there.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenmill.errors import ConfigError
from tokenmill.model.quant.io import replace_linear
from tokenmill.model.quant.linear import QuantLinear


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear | QuantLinear, rank: int, alpha: float, dropout: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.scaling = alpha / rank
        self.enabled = True
        device = base.weight.device if isinstance(base, nn.Linear) else base.qweight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear and PEFT initialise A
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        # The CPU's int8/int4 kernels quantize the input and pass no gradient back to it: a
        # quantized base multiplies by its dequantized weight instead — also without gradients, so
        # that DPO's reference (adapters off) sees exactly the weights the policy starts from.
        if isinstance(self.base, QuantLinear):
            bias = None if self.base.bias is None else self.base.bias.to(x.dtype)
            return F.linear(x, self.base.dequantize(x.dtype), bias)
        return self.base(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)
        if not self.enabled:
            return y
        update = F.linear(F.linear(self.dropout(x), self.lora_a.to(x.dtype)), self.lora_b.to(x.dtype))
        return y + update * self.scaling

    def merged(self) -> nn.Linear:
        """A plain linear layer computing what this one computes (without dropout), in the adapters' dtype."""
        base = self.base
        weight = base.weight.detach() if isinstance(base, nn.Linear) else base.dequantize(torch.float32)
        delta = (self.lora_b.detach().float() @ self.lora_a.detach().float()) * self.scaling
        layer = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                          device=self.lora_a.device, dtype=self.lora_a.dtype)
        layer.weight.data.copy_(weight.float() + delta)
        if base.bias is not None:
            layer.bias.data.copy_(base.bias.detach())
        return layer


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float, targets: Sequence[str]) -> list[str]:
    """Freeze every parameter of `model` and wrap each linear layer whose own name is in `targets`
    (e.g. "wqkv" matches layers.0.attn.wqkv) in a LoraLinear, in place; return the names wrapped."""
    model.requires_grad_(False)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    found = [name for name, m in model.named_modules()
             if isinstance(m, (nn.Linear, QuantLinear)) and name.rpartition(".")[2] in targets]
    if not found:
        linear = sorted({n.rpartition(".")[2] for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))})
        raise ConfigError(f"lora.targets: no linear layer named {list(targets)}; this model's are {linear}")
    for name in found:
        replace_linear(model, name, LoraLinear(model.get_submodule(name), rank, alpha, dropout, dtype))
    return found


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoraLinear) for m in model.modules())


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer, in place, and turn any remaining quantized layer into a
    plain one, so that `save_model` writes an ordinary model folder; return `model`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLinear):
            replace_linear(model, name, module.merged())
    if any(isinstance(m, QuantLinear) for m in model.modules()):
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        for name, module in list(model.named_modules()):
            if isinstance(module, QuantLinear):
                layer = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                  device=module.qweight.device, dtype=dtype)
                layer.weight.data.copy_(module.dequantize(torch.float32))
                if module.bias is not None:
                    layer.bias.data.copy_(module.bias.detach())
                replace_linear(model, name, layer.requires_grad_(False))
    return model


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """The model without its adapters for a while — the frozen reference DPO and PPO compare with,
    at no second copy of the weights."""
    adapters = [m for m in model.modules() if isinstance(m, LoraLinear)]
    for m in adapters:
        m.enabled = False
    try:
        yield
    finally:
        for m in adapters:
            m.enabled = True
