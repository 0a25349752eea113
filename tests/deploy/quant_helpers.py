"""Quantized tiny models for the export tests, and their dequantized reference."""

from __future__ import annotations

import copy

import torch

from tokenmill.deploy.quant.quantize import quantize_model, scheme_for
from tokenmill.model import load_model
from tokenmill.model.quant.linear import QuantLinear


def quantized(model_dir, method: str, group_size: int | None = 32, symmetric: bool = True):
    """The model of `model_dir` quantized by `method` (GPTQ on random calibration ids)."""
    model = load_model(model_dir, device="cpu", dtype=torch.float32)
    calib = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    quantize_model(model, method, scheme_for(method, group_size, symmetric), calib if method == "gptq" else None)
    return model


def dequantized(model):
    """The quantized model with every QuantLinear replaced by a float linear holding its dequantized weight."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, QuantLinear):
            linear = torch.nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            linear.weight.data = m.dequantize()
            if m.bias is not None:
                linear.bias.data = m.bias.data.clone()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, linear)
    return model
