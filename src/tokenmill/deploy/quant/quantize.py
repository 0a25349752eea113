"""Quantize a whole model in place: every linear layer of every block becomes a `QuantLinear`.

| method | bits | grid | how the codes are chosen |
|---|---|---|---|
| `int8` | 8 | per output channel | round to nearest |
| `rtn4` | 4 | groups of `group_size` | round to nearest |
| `gptq` | 4 | groups of `group_size` | GPTQ on calibration data (gptq.py) |
| `awq`  | 4 | groups of `group_size` | AWQ's scaling and clipping (awq.py), then round to nearest |

The token embedding and the output head stay in full precision: in a small model they are most
of the parameters but a lookup and one product, and a tied head is the embedding itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

import torch
import torch.nn as nn

from tokenmill.deploy.quant.awq import awq_model
from tokenmill.deploy.quant.gptq import gptq_model
from tokenmill.deploy.quant.rtn import rtn
from tokenmill.errors import TokenmillError
from tokenmill.model.quant.grid import Scheme
from tokenmill.model.quant.io import replace_linear
from tokenmill.model.quant.linear import QuantLinear

METHODS = ("int8", "rtn4", "gptq", "awq")
CALIBRATED = ("gptq", "awq")


def scheme_for(method: str, group_size: int | None = 128, symmetric: bool = True) -> Scheme:
    if method not in METHODS:
        raise TokenmillError(f"unknown quantization method '{method}'; choose one of {', '.join(METHODS)}")
    if method == "int8":
        return Scheme(bits=8, group_size=None, symmetric=symmetric)
    return Scheme(bits=4, group_size=group_size, symmetric=symmetric)


def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every linear layer inside the transformer blocks, by its name in the model."""
    return {f"layers.{name}": m for name, m in model.layers.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    method: str,
    scheme: Scheme,
    calib_ids: torch.Tensor | None = None,
    *,
    batch_size: int = 8,
    gptq_block_size: int = 128,
    gptq_damp: float = 0.01,
    gptq_act_order: bool = True,
    awq_grid: int = 20,
    awq_clip: bool = True,
    progress: Callable | None = None,
) -> dict:
    """Replace the linears of `model` by QuantLinears, in place. Returns what quantization.json records
    of the method (per layer: GPTQ's damping, dead columns and loss; AWQ's α and errors)."""
    if method in CALIBRATED and calib_ids is None:
        raise TokenmillError(f"{method} needs calibration data (token shards or documents)")
    model.eval()
    details: dict = {}
    if method == "gptq":
        results = gptq_model(model, calib_ids, scheme, gptq_block_size, gptq_damp, gptq_act_order, batch_size, progress)
        details = {"block_size": gptq_block_size, "damp": gptq_damp, "act_order": gptq_act_order, "layers": {
            name: {"damp": r.damp, "dead_columns": r.dead_columns, "loss": r.loss} for name, r in results.items()}}
    elif method == "awq":
        details = {"grid": awq_grid, "clip": awq_clip, "groups": awq_model(
            model, calib_ids, scheme, awq_grid, awq_clip, batch_size, progress=progress)}
    for name, linear in quantizable_linears(model).items():
        if method == "gptq":
            r = results[name]
            codes, scales, zeros = r.codes, r.scales, r.zeros
        else:
            codes, scales, zeros = rtn(linear.weight.data, scheme)
        replace_linear(model, name, QuantLinear.from_codes(codes, scales, zeros, scheme, linear.bias))
    return {"method": method, **asdict(scheme), **details}
