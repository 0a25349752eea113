"""GPTQ (Frantar et al., 2023): quantize a weight column by column, each column's rounding error
pushed onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
output error.

For a linear layer with inputs X (columns: tokens), the error ‖WX - QX‖² has Hessian
H = 2XXᵀ/n in each row of W. Quantizing column j with error e = (w_j - q_j) / [H⁻¹]_jj and
subtracting e · [H⁻¹]_j,j: from the later columns is the optimal brain surgeon update (OBQ);
GPTQ fixes the column order for all rows, takes the rows of H⁻¹ from the upper Cholesky
factor of H⁻¹ (numerically stable), and applies the updates block by block (lazy batch
updates): inside a block of `block_size` columns, then once to everything after it.

Details as in the reference implementation: a column no input ever touches (a dead column,
H_jj = 0) gets H_jj = 1 and weight 0; H is damped by `damp` × its mean diagonal (1%), raised
until the Cholesky factorisation succeeds; with `act_order` the columns go in order of
decreasing H_jj (largest activations first), and the group grids are then fixed from the
unquantized weight beforehand ("static groups"), so that each group still covers contiguous
original columns and the stored layout needs no permutation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn

from tokenmill.deploy.quant.calib import block_inputs, linears_of
from tokenmill.deploy.quant.rtn import find_params, grid_params, quantize
from tokenmill.errors import TokenmillError
from tokenmill.model.quant.grid import Scheme, dequantize, dequantize_matrix

MAX_DAMP = 10.0  # ten times the mean diagonal: a Hessian this far from positive definite is not data


@dataclass
class GPTQResult:
    codes: torch.Tensor  # (out, in) uint8
    scales: torch.Tensor  # (out, n_groups) float16
    zeros: torch.Tensor  # (out, n_groups) uint8
    damp: float  # the damping that made H positive definite, as a share of its mean diagonal
    dead_columns: int
    loss: float  # GPTQ's own estimate of the added output error, Σ (w - q)² / [H⁻¹]_jj² / 2


class Hessian:
    """H = 2XXᵀ/n over every input row seen so far, for one linear layer of `columns` inputs."""

    def __init__(self, columns: int, device: torch.device | str) -> None:
        self.H = torch.zeros(columns, columns, device=device, dtype=torch.float32)
        self.n = 0

    def add_batch(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        m = x.shape[0]
        # A running mean: rescale what is there, then add the new rows, each scaled by √(2/n).
        self.H *= self.n / (self.n + m)
        self.n += m
        x = math.sqrt(2 / self.n) * x
        self.H += x.t() @ x


def inverse_hessian_factor(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float]:
    """The upper Cholesky factor of (H + λI)⁻¹, λ = damp × mean diag(H); damp doubles until H + λI
    factorises. Returns the factor and the damp used."""
    mean_diag = torch.diagonal(H).mean()
    eye = torch.eye(H.shape[0], device=H.device, dtype=H.dtype)
    while True:
        L, info = torch.linalg.cholesky_ex(H + damp * mean_diag * eye)
        if info == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info = torch.linalg.cholesky_ex(Hinv, upper=True)
            if info == 0:
                return U, damp
        damp = damp * 2 if damp > 0 else 0.01
        if damp > MAX_DAMP:
            raise TokenmillError(f"GPTQ: the Hessian is not positive definite even with damping {MAX_DAMP:g} × its mean diagonal")


@torch.no_grad()
def gptq_quantize(
    weight: torch.Tensor, H: torch.Tensor, scheme: Scheme, block_size: int = 128, damp: float = 0.01, act_order: bool = False
) -> GPTQResult:
    """Quantize `weight` (out, in) given the Hessian `H` (in, in) of its inputs."""
    if not torch.isfinite(H).all():
        raise TokenmillError("GPTQ: the Hessian has NaN or inf entries; the calibration activations overflowed")
    W = weight.detach().float().clone()
    H = H.clone()
    rows, columns = W.shape
    group, n_groups = scheme.group(columns), scheme.n_groups(columns)

    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    # Static grids: fixed up front from the unquantized weight (act-order, or one group per row).
    static = act_order or n_groups == 1
    scales = torch.empty(rows, n_groups, dtype=torch.float16, device=W.device)
    zeros = torch.empty(rows, n_groups, dtype=torch.uint8, device=W.device)
    if static:
        scales, zeros = grid_params(W, scheme)

    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else torch.arange(columns, device=W.device)
    W, H = W[:, perm], H[perm][:, perm]
    U, used_damp = inverse_hessian_factor(H, damp)

    codes = torch.empty(rows, columns, dtype=torch.uint8, device=W.device)
    loss = torch.zeros((), device=W.device)
    for i1 in range(0, columns, block_size):
        i2 = min(i1 + block_size, columns)
        W1 = W[:, i1:i2].clone()
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            g = int(perm[col]) // group
            if not static and col % group == 0:
                # This group's grid from its columns as they are now: the updates of this block's
                # earlier columns are already in W1, but still pending for the columns after it.
                end = min(col + group, columns)
                later = W[:, i2:end] - Err1[:, :i] @ U[i1:col, i2:end]
                ahead = torch.cat([W1[:, i:], later], dim=1)[:, : end - col]
                scales[:, g], zeros[:, g] = find_params(ahead, scheme)
            w, d = W1[:, i], U1[i, i]
            q = quantize(w, scales[:, g], zeros[:, g], scheme)
            codes[:, col] = q
            err = (w - dequantize(q, scales[:, g], zeros[:, g])) / d
            loss += (err**2).sum() / 2
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ U[i1:i2, i2:]

    codes = codes[:, torch.argsort(perm)]
    return GPTQResult(codes, scales, zeros, used_damp, int(dead.sum()), float(loss))


# The linears of a block in the order they see their inputs; those that share an input share a step.
SEQUENCE = (("attn.wqkv",), ("attn.wo",), ("ffn.w1", "ffn.w3"), ("ffn.w2",))


@torch.no_grad()
def gptq_model(
    model: nn.Module, ids: torch.Tensor, scheme: Scheme, block_size: int = 128, damp: float = 0.01,
    act_order: bool = False, batch_size: int = 8, progress: Callable | None = None,
) -> dict[str, GPTQResult]:
    """GPTQ on every linear of every block, block by block and, inside a block, in the order of
    SEQUENCE: each step's Hessians come from inputs computed with the steps before it already
    quantized, and each block's inputs from the quantized blocks before it. The model's weights
    are left at their quantized values; the results hold the codes."""
    inputs = block_inputs(model, ids, batch_size)
    results: dict[str, GPTQResult] = {}
    for i, block in enumerate(progress(model.layers) if progress else model.layers):
        linears = linears_of(block)
        for step in SEQUENCE:
            names = [n for n in step if n in linears]
            hessians = {n: Hessian(linears[n].in_features, linears[n].weight.device) for n in names}
            hooks = [linears[n].register_forward_hook(lambda m, args, out, h=hessians[n]: h.add_batch(args[0])) for n in names]
            try:
                inputs.run(block)
            finally:
                for h in hooks:
                    h.remove()
            for n in names:
                weight = linears[n].weight
                result = gptq_quantize(weight, hessians[n].H, scheme, block_size, damp, act_order)
                weight.data = dequantize_matrix(result.codes, result.scales, result.zeros, scheme).to(weight.dtype)
                results[f"layers.{i}.{n}"] = result
        inputs.hidden = inputs.run(block)
    return results
