"""Parallel layouts applied to an unchanged `Transformer`, as torchtitan keeps `parallelize` apart from `model`.

- **DDP**: the model replicated, gradients all-reduced (Li et al., 2020).
- **FSDP2** (`fully_shard`): parameters, gradients and optimizer state sharded over the data-parallel
  ranks, each block all-gathered just before it runs (ZeRO-3; Rajbhandari et al., 2020).
- **Tensor parallel** (DTensor): Megatron-LM's split (Shoeybi et al., 2019): the Q/K/V and first MLP
  projections column-parallel, the output and second MLP projections row-parallel, one all-reduce
  after attention and one after the MLP. Each rank keeps whole heads.
- **2-D**: FSDP over tensor-parallel groups.
- **Pipeline** (`torch.distributed.pipelining`): the model traced and cut into `pp` stages of
  consecutive layers, run by GPipe (Huang et al., 2019) or 1F1B (Narayanan et al., 2019) over
  micro-batches.

The model code knows none of this. Tensor parallelism only changes three attributes of each
attention module (its local head counts), as torchtitan does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
from torch.nn.parallel import DistributedDataParallel as DDP

from tokenmill.errors import TokenmillError
from tokenmill.model.io import TIED
from tokenmill.model.transformer import Transformer
from tokenmill.pretrain.config import PretrainConfig
from tokenmill.pretrain.distributed import Dist

EMBEDDING = "tok_embeddings.weight"


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over every position (autocast computes it in float32)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# --- fused Q/K/V under tensor parallelism -------------------------------------------------------
# wqkv's rows are [q heads; k heads; v heads]. A plain column split would give rank 0 all of q.
# Each rank instead takes its share of q, of k and of v, so the sharded tensor's rows are in
# "rank order": [q_0; k_0; v_0; q_1; k_1; v_1; ...]. Checkpoints always hold the natural order.


def rank_rows(w: torch.Tensor, split: list[int], n: int, rank: int) -> torch.Tensor:
    return torch.cat([part.chunk(n)[rank] for part in w.split(split)])


def to_rank_order(w: torch.Tensor, split: list[int], n: int) -> torch.Tensor:
    return torch.cat([rank_rows(w, split, n, r) for r in range(n)])


def to_natural_order(w: torch.Tensor, split: list[int], n: int) -> torch.Tensor:
    blocks = [b.split([s // n for s in split]) for b in w.chunk(n)]
    return torch.cat([blocks[r][i] for i in range(len(split)) for r in range(n)])


class FusedQKVColwise(ColwiseParallel):
    """ColwiseParallel for a fused Q/K/V projection: every rank keeps whole heads of q, k and v."""

    def __init__(self, split: list[int]) -> None:
        super().__init__()
        self.split = split

    def _partition_linear_fn(self, name, module, device_mesh):
        n, rank = device_mesh.size(), device_mesh.get_local_rank()
        for pname, param in list(module.named_parameters()):
            local = rank_rows(param.detach(), self.split, n, rank).contiguous()
            sharded = DTensor.from_local(local, device_mesh, [Shard(0)], run_check=False)
            module.register_parameter(pname, nn.Parameter(sharded, requires_grad=param.requires_grad))


def apply_tp(model: Transformer, tp_mesh) -> None:
    n, rank = tp_mesh.size(), tp_mesh.get_local_rank()
    config = model.config
    if config.n_heads % n or config.n_kv_heads % n:
        raise TokenmillError(
            f"tp {n} must divide the attention heads ({config.n_heads}) and key/value heads ({config.n_kv_heads}), "
            "so that each rank holds whole heads"
        )
    for block in model.layers:
        attn = block.attn
        plan = {
            "attn.wqkv": FusedQKVColwise(attn.split),
            "attn.wo": RowwiseParallel(),
            "ffn.w1": ColwiseParallel(),
            "ffn.w2": RowwiseParallel(),
        }
        if block.ffn.w3 is not None:
            plan["ffn.w3"] = ColwiseParallel()
        parallelize_module(block, tp_mesh, plan)
        attn.n_heads //= n
        attn.n_kv_heads //= n
        attn.split = [s // n for s in attn.split]
    if config.position == "alibi":  # one slope per head: keep this rank's heads'
        model.alibi_slopes = model.alibi_slopes.chunk(n)[rank].clone()


# --- the model as this process runs it -----------------------------------------------------------


@dataclass
class Parallel:
    """This rank's part of the model, and how a batch goes forward and backward through it."""

    model: nn.Module  # holds this rank's parameters, named as in the whole model
    runner: nn.Module | None  # what a training forward calls (DDP wraps the model); None under pipelining
    device: torch.device
    qkv_split: list[int]  # rows of q, k and v in each wqkv (the whole tensor's)
    tp: int = 1  # wqkv rows are in rank order for this many ranks
    schedule: object | None = None
    first: bool = True  # holds the embedding
    last: bool = True  # holds the output head and computes the loss
    tied_copy: nn.Parameter | None = None  # the last pipeline stage's copy of a tied embedding
    tied_group: object | None = None
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy

    def __post_init__(self) -> None:
        if not self.params:
            self.params = list(self.model.named_parameters())

    def checkpoint_params(self) -> dict[str, nn.Parameter]:
        """This rank's parameters under their names in a checkpoint (a tied head is the embedding)."""
        return {(EMBEDDING if p is self.tied_copy else name): p for name, p in self.params}

    def norm_params(self) -> list[nn.Parameter]:
        """The parameters whose gradients make up the global norm (a tied copy counts once)."""
        return [p for _, p in self.params if p is not self.tied_copy]

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor, accum: int, amp, scaler) -> torch.Tensor | None:
        """Accumulate the gradient of the mean loss over `accum` micro-batches; return that loss
        (None on pipeline stages that do not compute it)."""
        if self.schedule is not None:
            return self._pipeline_step(x, y, amp)
        mb = x.shape[0] // accum
        total = torch.zeros((), device=self.device)
        for i in range(accum):
            with self._grad_sync(i == accum - 1), amp():
                loss = self.loss_fn(self.runner(x[i * mb : (i + 1) * mb]), y[i * mb : (i + 1) * mb])
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            total += loss.detach()
        return total / accum

    def _grad_sync(self, sync: bool):
        """Reduce gradients only after the last micro-batch."""
        if isinstance(self.runner, DDP) and not sync:
            return self.runner.no_sync()
        if isinstance(self.runner, FSDPModule):
            self.runner.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()

    def _run_schedule(self, run, x, y, amp) -> torch.Tensor | None:
        """`run` (the schedule's step or eval) on this stage: the first feeds x, the last gets the loss."""
        losses: list[torch.Tensor] = []
        with amp():
            if self.first:
                run(x)
            elif self.last:
                run(target=y, losses=losses)
            else:
                run()
        return torch.stack(losses).mean() if self.last else None

    def _pipeline_step(self, x, y, amp) -> torch.Tensor | None:
        loss = self._run_schedule(self.schedule.step, x, y, amp)
        if self.tied_group is not None:
            # The embedding (first stage) and the head (last stage) are one parameter: sum their gradients.
            tied = self.tied_copy if self.last else self.model.get_parameter(EMBEDDING)
            dist.all_reduce(tied.grad, group=self.tied_group)
        return loss

    @torch.no_grad()
    def eval_loss(self, x: torch.Tensor, y: torch.Tensor, amp) -> torch.Tensor | None:
        if self.schedule is None:
            with amp():
                return self.loss_fn(self.model(x), y)
        return self._run_schedule(self.schedule.eval, x, y, amp)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)


def parallelize(
    model: Transformer, d: Dist, config: PretrainConfig, micro_batch: int, seq_len: int, accum: int,
    amp_dtype: torch.dtype | None,
) -> Parallel:
    """Apply the layout of `d` to `model` (built whole, identically, on every rank)."""
    qkv_split = list(model.layers[0].attn.split)
    deg = d.degrees
    if deg["pp"] > 1:
        if config.compile:
            raise TokenmillError("compile does not combine with pipeline parallelism here (the stages are traced graphs)")
        return _pipeline(model, d, config.pp_schedule, micro_batch, seq_len, accum, qkv_split)
    if deg["tp"] > 1:
        apply_tp(model, d.mesh["tp"])
    loss_fn = cross_entropy
    if config.compile:
        # Block by block, as torchtitan does (FSDP's hooks and DTensor's layouts sit between blocks);
        # the loss too, so that its float32 upcast of the logits is fused, not materialised.
        for block in model.layers:
            block.compile()
        loss_fn = torch.compile(cross_entropy)
    runner: nn.Module = model
    if deg["fsdp"] > 1:
        from torch.distributed.fsdp import MixedPrecisionPolicy

        # Gather weights in the autocast dtype (half the traffic); reduce gradients in float32.
        policy = MixedPrecisionPolicy(param_dtype=amp_dtype, reduce_dtype=torch.float32)
        mesh = d.mesh["fsdp"]
        for block in model.layers:
            fully_shard(block, mesh=mesh, mp_policy=policy)
        fully_shard(model, mesh=mesh, mp_policy=policy)
    elif deg["dp"] > 1:
        runner = DDP(model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
    return Parallel(model, runner, d.device, qkv_split, tp=deg["tp"], loss_fn=loss_fn)


def _pipeline(model: Transformer, d: Dist, kind: str, micro_batch: int, seq_len: int, accum: int, qkv_split) -> Parallel:
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, SplitPoint, pipeline

    pp, L = d.degrees["pp"], model.config.n_layers
    if pp > L:
        raise TokenmillError(f"pp {pp} exceeds the {L} layers of the model")
    if model.config.dropout > 0:
        raise TokenmillError("pipeline stages are traced graphs, which keep dropout on in evaluation: set dropout to 0")
    if accum < pp:
        raise TokenmillError(
            f"a pipeline of {pp} stages needs at least {pp} micro-batches per step, got {accum}: "
            "lower micro_batch or raise batch_tokens"
        )
    stage_index = d.coord("pp")
    starts = [round(s * L / pp) for s in range(1, pp)]
    example = torch.zeros(micro_batch, seq_len, dtype=torch.long, device=d.device)
    pipe = pipeline(model, mb_args=(example,), split_spec={f"layers.{k}": SplitPoint.BEGINNING for k in starts})
    stage = pipe.build_stage(stage_index, d.device, group=d.mesh["pp"].get_group())
    # Every stage keeps schedule_class's own default: gradients scaled by 1/micro-batches (a mean).
    schedule_class = ScheduleGPipe if kind == "gpipe" else Schedule1F1B
    schedule = schedule_class(stage, n_microbatches=accum, loss_fn=cross_entropy)
    first, last = stage_index == 0, stage_index == pp - 1
    module = stage.submod
    tied_copy, tied_group = None, None
    if model.config.tie_embeddings:
        ends = [dist.get_global_rank(d.mesh["pp"].get_group(), r) for r in (0, pp - 1)]
        tied_group = dist.new_group(ends)
        if last:
            tied_copy = module.get_parameter(TIED)
        if not (first or last):
            tied_group = None
    # Tracing leaves a copy of a tied head on stages that never use it.
    params = [(name, p) for name, p in module.named_parameters() if last or name != TIED]
    return Parallel(
        module, None, d.device, qkv_split, schedule=schedule, first=first, last=last, tied_copy=tied_copy,
        tied_group=tied_group, params=params,
    )
