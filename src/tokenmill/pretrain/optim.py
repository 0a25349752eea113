"""AdamW with decoupled weight decay on the matrices only, and clipping by the global gradient norm.

Norm gains, biases and embeddings are not decayed (as in GPT-3 and LLaMA): decay pulls
parameters towards zero, which is meaningless for a gain whose neutral value is one, and the
embeddings of rare tokens would shrink between their rare updates. `decay_embeddings`
decays the embeddings too (nanoGPT decays every matrix, the tied embedding included).

Sharded layouts make some parameters DTensors on one device mesh and others on another (or
plain tensors), and a foreach kernel cannot mix them; so parameters are grouped by mesh as
well as by decay, and norms are taken per group.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor

from tokenmill.pretrain.config import OptimConfig


def decayed_names(model: nn.Module, decay_embeddings: bool) -> set[str]:
    """Names of the parameters that get weight decay: matrices, minus embeddings unless asked.

    A tied output head is the embedding, under both of its names (a pipeline stage that holds
    only the head knows it by the head's name)."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return {
        name
        for name, p in model.named_parameters(remove_duplicate=False)
        if p.ndim >= 2 and (decay_embeddings or id(p) not in embeddings)
    }


def _mesh(p: torch.Tensor):
    return p.device_mesh if isinstance(p, DTensor) else None


def build_optimizer(
    named: Iterable[tuple[str, nn.Parameter]], decayed: set[str], config: OptimConfig, device: torch.device
) -> torch.optim.AdamW:
    groups: dict[tuple, list[nn.Parameter]] = defaultdict(list)
    sharded = False
    for name, p in named:
        if p.requires_grad:
            groups[(name in decayed, id(_mesh(p)))].append(p)
            sharded |= isinstance(p, DTensor)
    param_groups = [
        {"params": params, "weight_decay": config.weight_decay if decay else 0.0} for (decay, _), params in groups.items()
    ]
    # The fused CUDA kernel updates every tensor in one launch; foreach elsewhere.
    fused = device.type == "cuda" and not sharded
    return torch.optim.AdamW(param_groups, lr=config.lr, betas=config.betas, eps=config.eps, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _grads_by_mesh(params: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[int, list[torch.Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            groups[id(_mesh(p.grad))].append(p.grad)
    return list(groups.values())


def grad_norm_squared(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Σ‖g‖² over `params`, whole over the shards of every DTensor (a tensor, not synced to the host)."""
    total = None
    for grads in _grads_by_mesh(params):
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        total = norm.float().square() if total is None else total + norm.float().square()
    return total if total is not None else torch.zeros(())


def clip_grads(params: Iterable[torch.Tensor], max_norm: float, total_norm: float) -> None:
    """Scale the gradients so that their global norm is at most `max_norm` (torch's formula)."""
    coef = max_norm / (total_norm + 1e-6)
    if coef < 1.0:
        for grads in _grads_by_mesh(params):
            torch._foreach_mul_(grads, coef)
