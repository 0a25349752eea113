"""Processes, devices and the device mesh: one process per device, started by torchrun.

    torchrun --nproc_per_node 8 -m tokenmill pretrain CONFIG --set pretrain.fsdp=4 --set pretrain.tp=2

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them there is one process and no
process group. The backend is NCCL on GPUs and gloo on the CPU. The mesh has four named
dimensions, (pp, dp, fsdp, tp): tensor-parallel ranks are neighbours (on one node they share
NVLink), pipeline stages are furthest apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from tokenmill.device import DeviceChoice, pick_device
from tokenmill.errors import TokenmillError
from tokenmill.pretrain.config import PretrainConfig

MESH_DIMS = ("pp", "dp", "fsdp", "tp")


@dataclass
class Dist:
    rank: int
    world: int
    device: torch.device
    degrees: dict[str, int]  # pp, dp, fsdp, tp
    mesh: DeviceMesh | None
    owns_group: bool = False  # this process group was started here, and is closed here

    def coord(self, dim: str) -> int:
        return 0 if self.mesh is None else self.mesh.get_local_rank(dim)

    @property
    def dp_size(self) -> int:
        """Ranks that see different data: replicated and sharded data parallel together."""
        return self.degrees["dp"] * self.degrees["fsdp"]

    @property
    def dp_rank(self) -> int:
        return self.coord("dp") * self.degrees["fsdp"] + self.coord("fsdp")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over every process (in place); a no-op in a single process."""
        if self.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def layout(config: PretrainConfig, world: int) -> dict[str, int]:
    """The degrees of each mesh dimension; their product is the number of processes."""
    fixed = config.fsdp * config.tp * config.pp
    dp = config.dp if config.dp is not None else max(world // fixed, 1)
    degrees = {"pp": config.pp, "dp": dp, "fsdp": config.fsdp, "tp": config.tp}
    if dp * fixed != world:
        raise TokenmillError(
            f"the layout dp {dp} × fsdp {config.fsdp} × tp {config.tp} × pp {config.pp} = {dp * fixed} processes, "
            f"but {world} are running; start it with torchrun --nproc_per_node {dp * fixed} (or change the degrees)"
        )
    if config.pp > 1 and dp * config.fsdp * config.tp > 1:
        raise TokenmillError("pipeline parallelism (pp > 1) does not combine with dp, fsdp or tp here; use pp alone")
    if config.tp > 1 and dp > 1:
        raise TokenmillError("tensor parallelism combines with fsdp (2-D FSDP × TP), not with dp; set fsdp instead of dp")
    if dp > 1 and config.fsdp > 1:
        raise TokenmillError("choose replicated (dp) or sharded (fsdp) data parallelism, not both")
    return degrees


def init_distributed(config: PretrainConfig) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    degrees = layout(config, world)
    device = pick_device(config.device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the process's own GPU for collectives and unplaced tensors
    if world == 1:
        return Dist(0, 1, device, degrees, None)
    owns = _start_group(device)
    mesh = init_device_mesh(device.type, tuple(degrees[d] for d in MESH_DIMS), mesh_dim_names=MESH_DIMS)
    return Dist(rank, world, device, degrees, mesh, owns)


def _start_group(device: torch.device) -> bool:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on the CPU), unless this
    process already has; whether it was started here."""
    if dist.is_initialized():
        return False
    cuda = device.type == "cuda"
    dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return True


def init_data_parallel(device: DeviceChoice = "auto") -> Dist:
    """Every process a whole replica, each on its share of every batch (alignment's data parallelism):
    the processes torchrun started, or one process and no group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    chosen = pick_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    degrees = {"pp": 1, "dp": world, "fsdp": 1, "tp": 1}
    if world == 1:
        return Dist(0, 1, chosen, degrees, None)
    return Dist(rank, world, chosen, degrees, None, _start_group(chosen))
