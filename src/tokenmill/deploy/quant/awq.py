"""AWQ (Lin et al., 2024): activation-aware weight quantization.

Weights that meet large activations matter most. Scaling input channel j of a linear layer up
by s_j and its input down by s_j leaves the product unchanged in full precision, but shrinks
the relative rounding error of the channels that matter. The input is divided by folding 1/s
into whatever produces it (a norm's γ, the V rows of the QKV projection, the up-projection of a
gated MLP), so inference costs nothing extra. Per block and per scaling group, s = x̄^α with x̄
the mean |activation| of each input channel, α on a grid in [0, 1) chosen to minimise the
block's output error with the group's weights quantized (α = 0 is plain RTN, so the search
never does worse on the calibration set). An optional search then clips each output row's
weight range per group (shrinking max|w| by up to half) where that lowers the layer's output
error, as the reference implementation does; the Q and K rows are left unclipped, since
attention scores are sensitive to them. The weights are finally quantized by RTN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenmill.deploy.quant.calib import BlockInputs, block_inputs
from tokenmill.deploy.quant.rtn import fake_quantize, find_params, quantize
from tokenmill.model.config import ModelConfig
from tokenmill.model.quant.grid import Scheme, dequantize


@dataclass
class ScalingGroup:
    """Linears whose common input AWQ rescales, and how 1/s is folded into the producer of that input.

    `s` lives in the producer's output channels; `expand` maps it onto the linears' input columns
    and `reduce` maps a statistic of those columns back (they differ only for V → W_O under GQA,
    where one V channel feeds the same column of every query head of its group)."""

    name: str
    linears: list[nn.Linear]
    fold: Callable[[torch.Tensor], None]
    expand: Callable[[torch.Tensor], torch.Tensor] = lambda s: s
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    stats: torch.Tensor | None = field(default=None, repr=False)  # mean |input| per producer channel


def _fold_into_norm(norm: nn.Module) -> Callable[[torch.Tensor], None]:
    def fold(s: torch.Tensor) -> None:
        if norm.unit_offset:  # Gemma's RMSNorm scales by 1 + γ
            norm.weight.data = ((1 + norm.weight.data.float()) / s - 1).to(norm.weight.dtype)
        else:
            norm.weight.data = (norm.weight.data.float() / s).to(norm.weight.dtype)
        if norm.bias is not None:
            norm.bias.data = (norm.bias.data.float() / s).to(norm.bias.dtype)

    return fold


def _fold_into_rows(linear: nn.Linear, rows: slice) -> Callable[[torch.Tensor], None]:
    """Divide output rows `rows` of `linear` (and their bias) by s."""

    def fold(s: torch.Tensor) -> None:
        linear.weight.data[rows] = (linear.weight.data[rows].float() / s[:, None]).to(linear.weight.dtype)
        if linear.bias is not None:
            linear.bias.data[rows] = (linear.bias.data[rows].float() / s).to(linear.bias.dtype)

    return fold


def scaling_groups(block: nn.Module, config: ModelConfig) -> list[ScalingGroup]:
    """The scaling groups of one block, in the order their inputs are computed. A group exists only
    where 1/s folds exactly: a norm that feeds nothing but these linears (not post-norm, whose norm
    output is the residual stream), V (attention output is linear in V), and an MLP whose hidden
    activation commutes with a positive scale (the gated MLP's up-projection, ReLU)."""
    attn, ffn = block.attn, block.ffn
    mlp_in = [ffn.w1] + ([ffn.w3] if ffn.w3 is not None else [])
    groups = []
    if config.norm_place == "pre":
        if block.ffn_norm is None:  # one norm feeds both branches (Falcon)
            groups.append(ScalingGroup("norm→qkv,mlp", [attn.wqkv, *mlp_in], _fold_into_norm(block.attn_norm)))
        else:
            groups.append(ScalingGroup("norm→qkv", [attn.wqkv], _fold_into_norm(block.attn_norm)))
    kv, per_kv, hd = config.n_kv_heads, config.n_heads // config.n_kv_heads, config.head_dim
    v_rows = slice((config.n_heads + kv) * hd, (config.n_heads + 2 * kv) * hd)
    groups.append(ScalingGroup(
        "v→o", [attn.wo], _fold_into_rows(attn.wqkv, v_rows),
        expand=lambda s: s.view(kv, 1, hd).expand(kv, per_kv, hd).reshape(-1),
        reduce=lambda x: x.view(kv, per_kv, hd).mean(1).reshape(-1),
    ))
    if config.norm_place == "pre" and block.ffn_norm is not None:
        groups.append(ScalingGroup("norm→mlp", mlp_in, _fold_into_norm(block.ffn_norm)))
    if ffn.w3 is not None:
        groups.append(ScalingGroup("up→down", [ffn.w2], _fold_into_rows(ffn.w3, slice(None))))
    elif config.mlp == "relu":
        groups.append(ScalingGroup("fc1→fc2", [ffn.w2], _fold_into_rows(ffn.w1, slice(None))))
    return groups


def apply_scale(group: ScalingGroup, s: torch.Tensor) -> None:
    """Multiply the linears' input columns by s and fold 1/s into the producer: the same function."""
    cols = group.expand(s)
    for linear in group.linears:
        linear.weight.data = (linear.weight.data.float() * cols).to(linear.weight.dtype)
    group.fold(s)


@torch.no_grad()
def search_scale(
    group: ScalingGroup, run: Callable[[], torch.Tensor], target: torch.Tensor, scheme: Scheme, n_grid: int
) -> tuple[torch.Tensor, float, float]:
    """The best s = x̄^α / √(max · min) over α = 0, 1/n_grid, ...: (s, α, loss). `run` computes the
    block's outputs, which are compared with `target` (the unquantized block's)."""
    originals = [linear.weight.data for linear in group.linears]
    best = (torch.ones_like(group.stats), 0.0, float("inf"))
    for i in range(n_grid):
        alpha = i / n_grid
        s = group.stats.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        cols = group.expand(s)
        for linear, w in zip(group.linears, originals):
            # Q(W·s)/s applied to x equals Q(W·s) applied to x/s: the folded layer, without folding.
            linear.weight.data = (fake_quantize(w.float() * cols, scheme) / cols).to(w.dtype)
        loss = float((run() - target).float().pow(2).mean())
        if loss < best[2]:
            best = (s, alpha, loss)
    for linear, w in zip(group.linears, originals):
        linear.weight.data = w
    return best


@torch.no_grad()
def search_clip(
    w: torch.Tensor, x: torch.Tensor, scheme: Scheme, n_grid: int = 20, max_shrink: float = 0.5, chunk: int = 256
) -> torch.Tensor:
    """Per output row and group, the clipping bound (out, n_groups) in [(1 - max_shrink)·max|w|, max|w|]
    that minimises the error of that group's share of the layer's output on inputs `x` (tokens, in)."""
    out, n = w.shape
    group, n_groups = scheme.group(n), scheme.n_groups(n)
    pad = n_groups * group - n
    xg = F.pad(x.float(), (0, pad)).view(-1, n_groups, group)
    bounds = []
    for rows in F.pad(w.float(), (0, pad)).view(out, n_groups, group).split(chunk):
        reference = torch.einsum("tgk,ogk->otg", xg, rows)
        full = rows.abs().amax(-1)
        best, best_err = full.clone(), torch.full_like(full, float("inf"))
        for i in range(int(max_shrink * n_grid)):
            bound = full * (1 - i / n_grid)
            clipped = torch.clamp(rows, -bound[..., None], bound[..., None])
            scale, zero = find_params(clipped, scheme)
            q = dequantize(quantize(clipped, scale[..., None], zero[..., None], scheme), scale[..., None], zero[..., None])
            err = (torch.einsum("tgk,ogk->otg", xg, q) - reference).pow(2).mean(1)
            better = err < best_err
            best_err[better], best[better] = err[better], bound[better]
        bounds.append(best)
    return torch.cat(bounds)


def clip_weight(linear: nn.Linear, bound: torch.Tensor, scheme: Scheme, rows: slice = slice(None)) -> None:
    """Clamp each group of `rows` of the weight to ±bound (out, n_groups)."""
    w = linear.weight.data
    b = bound.repeat_interleave(scheme.group(w.shape[1]), dim=1)[:, : w.shape[1]].to(w.dtype)
    w[rows] = torch.maximum(torch.minimum(w[rows], b[rows]), -b[rows])


def _capture_inputs(inputs: BlockInputs, block: nn.Module, linears: list[nn.Linear]) -> dict:
    """Inputs (tokens, in) of each linear over all calibration batches."""
    seen: dict[nn.Linear, list[torch.Tensor]] = {linear: [] for linear in linears}
    hooks = [linear.register_forward_hook(lambda m, args, out: seen[m].append(args[0].reshape(-1, args[0].shape[-1])))
             for linear in linears]
    try:
        inputs.run(block)
    finally:
        for h in hooks:
            h.remove()
    return {m: torch.cat(xs) for m, xs in seen.items()}


@torch.no_grad()
def awq_model(
    model: nn.Module, ids: torch.Tensor, scheme: Scheme, n_grid: int = 20, clip: bool = True, batch_size: int = 8,
    clip_tokens: int = 512, progress: Callable | None = None,
) -> dict[str, dict]:
    """Rescale (and clip) the linears of every block of `model` in place, ready for RTN. Returns, per
    scaling group, the chosen α and the block output error before (α = 0, i.e. RTN) and after."""
    inputs = block_inputs(model, ids, batch_size)
    report: dict[str, dict] = {}
    for i, block in enumerate(progress(model.layers) if progress else model.layers):
        outputs = inputs.run(block)
        target = torch.cat(outputs)
        groups = scaling_groups(block, model.config)
        inputs_of = _capture_inputs(inputs, block, [g.linears[0] for g in groups])
        for g in groups:
            g.stats = g.reduce(inputs_of[g.linears[0]].abs().float().mean(0))
        del inputs_of
        def run(block: nn.Module = block) -> torch.Tensor:
            return torch.cat(inputs.run(block))

        for g in groups:
            rtn_loss = search_scale(g, run, target, scheme, 1)[2]  # the grid's first point, α = 0
            s, alpha, loss = search_scale(g, run, target, scheme, n_grid)
            apply_scale(g, s)
            report[f"layers.{i}.{g.name}"] = {"alpha": alpha, "rtn_error": rtn_loss, "awq_error": loss}
        if clip:
            linears = dict(block.named_modules())
            names = [n for n, m in linears.items() if isinstance(m, nn.Linear)]
            seen = _capture_inputs(inputs, block, [linears[n] for n in names])
            v_rows = slice((model.config.n_heads + model.config.n_kv_heads) * model.config.head_dim, None)
            for n in names:
                x = seen[linears[n]]  # a sample spread over all calibration tokens, not the first batch's
                x = x[torch.linspace(0, len(x) - 1, min(clip_tokens, len(x)), device=x.device).long()]
                bound = search_clip(linears[n].weight.data, x, scheme)
                clip_weight(linears[n], bound, scheme, v_rows if n == "attn.wqkv" else slice(None))
        inputs.hidden = outputs  # as in AWQ, each block gets the unquantized outputs of the one before
    return report
