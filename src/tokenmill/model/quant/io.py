"""A quantized model folder: model.json, model.safetensors, quantization.json and the tokenizer files.

model.safetensors holds the unquantized tensors under their usual names and, for each quantized
linear `layers.3.ffn.w2`, `layers.3.ffn.w2.qweight`, `.scales`, `.qzeros` (asymmetric only) and
`.bias` (when it has one), laid out as linear.py describes. quantization.json says how: the
method, bits, group size, symmetry, the layers, and what the method recorded (calibration,
GPTQ's damping per layer, AWQ's scaling exponents). `tokenmill.model.load_model` reads such a
folder through `load_quantized`; tokenmill.deploy.quant writes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from tokenmill.errors import TokenmillError
from tokenmill.model.config import read_config
from tokenmill.model.io import load_state, read_weights
from tokenmill.model.quant.grid import Scheme
from tokenmill.model.quant.linear import QuantLinear
from tokenmill.model.transformer import Transformer

QUANTIZATION = "quantization.json"
FORMAT = "tokenmill-quant"
VERSION = 1
LAYOUT = {
    "weight": "(code - zero) * scale, per group of group_size input columns (null: one group per row)",
    "qweight": "int8 (out, in) holding code - 128 for 8 bits; uint8 (out, ceil(in/2)) for 4 bits, "
    "two codes per byte, the even column in the low nibble",
    "scales": "float16 (out, n_groups)",
    "qzeros": "asymmetric only, (out, n_groups): int8 holding zero - 128 for 8 bits, uint8 for 4 bits; "
    "symmetric grids have zero = 2^(bits-1)",
}


def replace_linear(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` in the place of the submodule called `name` (e.g. `layers.3.ffn.w2`)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, new)


def read_quantization(folder: str | Path) -> dict:
    """The contents of a folder's quantization.json, checked to be a format and version this code reads."""
    path = Path(folder) / QUANTIZATION
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise TokenmillError(f"cannot read {path}: {e}") from None
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise TokenmillError(f"{path} is format {info.get('format')!r} version {info.get('version')!r}; "
                             f"this tokenmill reads {FORMAT} version {VERSION}")
    return info


def load_quantized(folder: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Transformer:
    """The quantized model of a folder, in eval mode, on `device` (CUDA when present). `dtype` applies
    to the unquantized tensors and the computation; codes, scales and zeros stay as stored."""
    folder = Path(folder)
    config, info = read_config(folder), read_quantization(folder)
    scheme = Scheme(bits=info["bits"], group_size=info["group_size"], symmetric=info["symmetric"])
    path, state = read_weights(folder, device)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() and not k.endswith(".scales") else v for k, v in state.items()}
    with torch.device("meta"):
        model = Transformer(config)
        for name in info["modules"]:
            linear = model.get_submodule(name)
            replace_linear(model, name, QuantLinear(linear.in_features, linear.out_features, scheme, linear.bias is not None))
    model = load_state(model, state, path).eval()
    for module in model.modules():  # repack once now rather than at the first token
        if isinstance(module, QuantLinear) and module.qweight.device.type == "cpu" and module.kernel() is not None:
            module.prepare_kernel()
    return model

