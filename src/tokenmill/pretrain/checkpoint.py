"""Checkpoints: the full training state through `torch.distributed.checkpoint` (DCP), written atomically.

    checkpoints/step-00000400/          regular; the last `keep_last` are kept
        .metadata, __0_0.distcp, ...    DCP: every rank writes its own shards
        tokenmill_checkpoint.json       marker: step, data position, skipped batches, ...
    checkpoints/golden/step-00001000/   golden: kept apart, never deleted; the loss-spike guard returns to them

What is saved: every parameter and both AdamW moments (sharded tensors as shards), the step of
each, the RNG state of the CPU and of every CUDA device of every rank, and the marker's JSON
(step, data position, skipped batches, the spike guard's window, the fp16 loss scale). Names are
those of the whole model whatever the layout, and fused Q/K/V rows are kept in their natural
order, so a checkpoint loads into any layout: 2 processes → 1, FSDP → DDP, TP → none, and into
a single process without any process group.

A checkpoint is written into `NAME.tmp-save`, given its marker, and renamed; a directory
without a marker is never read, so a run killed while saving resumes from the previous one.
Weights or moments that are not finite are never saved. DCP's `.metadata` is a pickle, so a
checkpoint is trusted like code: the marker records the SHA-256 of every file, written by rank
0 once every rank has written its own, and a checkpoint whose files differ is not read
(`tokenmill.pretrain.digests`).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor, distribute_tensor

from tokenmill.atomic import TMP_MARK, fsync_dir, publish, write_json
from tokenmill.errors import TokenmillError
from tokenmill.model.config import ModelConfig
from tokenmill.model.io import TIED, copy_tokenizer, first_non_finite, save_model
from tokenmill.model.transformer import Transformer
from tokenmill.pretrain.digests import ALGORITHM, file_digests, verify_digests
from tokenmill.pretrain.distributed import Dist
from tokenmill.pretrain.parallelize import Parallel, to_natural_order, to_rank_order
from tokenmill.pretrain.state import TrainState

MARKER = "tokenmill_checkpoint.json"
GOLDEN = "golden"
FORMAT = 2  # 2: the marker holds the digests of the files
MOMENTS = ("exp_avg", "exp_avg_sq")


@contextmanager
def _single_process_ok():
    """DCP warns on every single-process save and load; that is what we mean to do."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def _complete(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith("step-") and TMP_MARK not in p.name and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: p.name)


def read_marker(path: Path) -> dict[str, Any]:
    return json.loads((path / MARKER).read_text(encoding="utf-8"))


def verify(path: Path) -> dict[str, Any]:
    """The marker of `path`, once every file is checked against the digests it recorded."""
    marker = read_marker(path)
    if ALGORITHM not in marker:
        raise TokenmillError(
            f"checkpoint {path} records no digests of its files (an older tokenmill wrote it), so it cannot be "
            "checked before its pickled metadata is read: delete the folder, or start afresh without --resume"
        )
    verify_digests(path, marker[ALGORITHM], MARKER)
    return marker


class Checkpointer:
    def __init__(
        self, folder: Path, d: Dist, par: Parallel, optimizer: torch.optim.Optimizer, model_config: ModelConfig, keep_last: int
    ) -> None:
        self.folder, self.golden_folder = Path(folder), Path(folder) / GOLDEN
        self.d, self.par, self.optimizer = d, par, optimizer
        self.model_config, self.keep_last = model_config, keep_last

    # --- where checkpoints are -------------------------------------------------------------------

    def regular(self) -> list[Path]:
        return _complete(self.folder)

    def golden(self) -> list[Path]:
        return _complete(self.golden_folder)

    def latest(self) -> Path | None:
        found = self.regular() + self.golden()
        return max(found, key=lambda p: read_marker(p)["step"]) if found else None

    def clear(self) -> None:
        """Forget every checkpoint (a fresh start); rank 0 deletes, all ranks wait."""
        if self.d.is_main and self.folder.exists():
            shutil.rmtree(self.folder)
        self.d.barrier()

    def drop_after(self, step: int) -> None:
        """Delete regular checkpoints past `step`: after a rollback they belong to an abandoned path."""
        if self.d.is_main:
            for path in self.regular():
                if read_marker(path)["step"] > step:
                    shutil.rmtree(path)
        self.d.barrier()

    # --- what a checkpoint holds --------------------------------------------------------------------

    def _is_qkv(self, name: str) -> bool:
        return self.par.tp > 1 and ".attn.wqkv." in name

    def _tensors(self, for_load: bool) -> dict[str, torch.Tensor]:
        """The DCP state dict of this rank. Under tensor parallelism, each wqkv (and its moments)
        is a whole tensor in natural row order: gathered when saving, an empty buffer when loading."""
        out: dict[str, torch.Tensor] = {}
        for name, p in self.par.checkpoint_params().items():
            state = self.optimizer.state[p]
            items = {f"model.{name}": p, **{f"optim.{name}.{m}": state[m] for m in MOMENTS}}
            for key, t in items.items():
                if self._is_qkv(name):
                    t = torch.empty(t.shape, dtype=t.dtype, device=self.d.device) if for_load else self._natural(t)
                out[key] = t
            out[f"optim.{name}.step"] = state["step"]
        out[f"rng.cpu.{self.d.rank}"] = torch.get_rng_state()
        if torch.cuda.is_available():
            out[f"rng.cuda.{self.d.rank}"] = torch.stack(torch.cuda.get_rng_state_all())
        return out

    def _natural(self, t: torch.Tensor) -> torch.Tensor:
        full = t.full_tensor() if isinstance(t, DTensor) else t
        return to_natural_order(full, self.par.qkv_split, self.par.tp)

    def _ensure_optimizer_state(self) -> None:
        """AdamW creates its state at the first step; take a step of nothing (zero gradients, lr 0)
        so that every tensor a checkpoint loads into exists, in whatever form this AdamW keeps it."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if all(p in self.optimizer.state for p in params):
            return
        lrs = [g["lr"] for g in self.optimizer.param_groups]
        for g in self.optimizer.param_groups:
            g["lr"] = 0.0
        for p in params:
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr

    # --- save and load ----------------------------------------------------------------------------

    def save(self, state: TrainState, golden: bool = False) -> Path:
        name = step_name(state.step)
        tensors = self._tensors(for_load=False)
        self._check_finite(tensors, name)
        tmp = self.folder / f"{name}{TMP_MARK}save"
        if self.d.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.d.barrier()
        with _single_process_ok():
            dcp.save(tensors, checkpoint_id=tmp, no_dist=self.d.world == 1)  # each file fsynced (sync_files)
        self.d.barrier()  # every rank's files are written: now they can be hashed
        final = self.folder / name
        if self.d.is_main:
            write_json(tmp / MARKER, {  # also fsyncs tmp/, and with it the names of DCP's files
                "format": FORMAT,
                "step": state.step,
                "state": state.to_json(),
                "model": self.model_config.model_dump(mode="json"),
                "world": self.d.world,
                "layout": self.d.degrees,
                "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                ALGORITHM: file_digests(tmp, MARKER),
            })
            publish(tmp, final)
            if golden:
                self.golden_folder.mkdir(parents=True, exist_ok=True)
                # DCP files are never rewritten, so the golden copy can share them (hard links).
                publish(_link_copy(final, self.golden_folder / f"{name}{TMP_MARK}save"), self.golden_folder / name)
            for old in self.regular()[: -self.keep_last]:
                shutil.rmtree(old)
        self.d.barrier()
        return final

    def _check_finite(self, tensors: dict[str, torch.Tensor], name: str) -> None:
        """Refuse, on every rank at once, to save a state holding NaN or infinite values: each rank
        checks its own shards, and all learn the first rank's first such tensor."""
        local = {k: t.to_local() if isinstance(t, DTensor) else t for k, t in tensors.items() if not k.startswith("rng.")}
        found = self.d.gather(first_non_finite(local))
        bad = next(((rank, key) for rank, key in enumerate(found) if key is not None), None)
        if bad is not None:
            where = f" (on rank {bad[0]})" if self.d.world > 1 else ""
            raise TokenmillError(
                f"not saving checkpoint {name}: {bad[1]}{where} holds NaN or infinite values (the training diverged); "
                "lower pretrain.lr or raise warmup_steps"
            )

    def load(self, path: Path) -> TrainState:
        """Restore parameters, AdamW state and RNG from `path`, once its files are checked against
        their digests; return its TrainState."""
        problem = None
        if self.d.is_main:  # one rank reads and hashes the files; all refuse together
            try:
                verify(path)
            except TokenmillError as e:
                problem = str(e)
        problem = self.d.broadcast(problem)
        if problem is not None:
            raise TokenmillError(problem)
        marker = read_marker(path)
        saved = ModelConfig.model_validate(marker["model"])
        if saved != self.model_config:
            diff = sorted(k for k, v in saved.model_dump().items() if getattr(self.model_config, k) != v)
            raise TokenmillError(
                f"checkpoint {path} is of another model (differs in {', '.join(diff)}); start afresh or restore model.json"
            )
        self._ensure_optimizer_state()
        tensors = self._tensors(for_load=True)
        present = set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)
        # The RNG of a rank that did not exist when saving stays as seeded.
        tensors = {k: v for k, v in tensors.items() if not k.startswith("rng.") or k in present}
        with _single_process_ok():
            dcp.load(tensors, checkpoint_id=path, no_dist=self.d.world == 1)
        with torch.no_grad():
            for name, p in self.par.checkpoint_params().items():
                if self._is_qkv(name):
                    state = self.optimizer.state[p]
                    for live, key in [(p, f"model.{name}"), *((state[m], f"optim.{name}.{m}") for m in MOMENTS)]:
                        ordered = to_rank_order(tensors[key], self.par.qkv_split, self.par.tp)
                        local = distribute_tensor(ordered, live.device_mesh, live.placements, src_data_rank=None)
                        live.to_local().copy_(local.to_local())
        if f"rng.cpu.{self.d.rank}" in tensors:
            torch.set_rng_state(tensors[f"rng.cpu.{self.d.rank}"])
        if f"rng.cuda.{self.d.rank}" in tensors:
            torch.cuda.set_rng_state_all(list(tensors[f"rng.cuda.{self.d.rank}"]))
        return TrainState.from_json(marker["state"])


def _link_copy(src: Path, dst: Path) -> Path:
    shutil.rmtree(dst, ignore_errors=True)

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:  # a file system without hard links
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)
    fsync_dir(dst)
    return dst


def export_model(checkpoint: Path, config: ModelConfig, out: Path, tokenizer_dir: Path | None) -> Path:
    """Write a self-contained model folder (model.json, model.safetensors, tokenizer files) from a
    checkpoint, in this process alone whatever layout saved it."""
    verify(checkpoint)
    with torch.device("meta"):
        model = Transformer(config)
    model.to_empty(device="cpu")
    model.tie_weights()
    targets = {f"model.{k}": v for k, v in model.state_dict().items() if not (config.tie_embeddings and k == TIED)}
    with _single_process_ok():
        dcp.load(targets, checkpoint_id=checkpoint, no_dist=True)
    model.init_buffers("cpu")
    save_model(model, out)
    if tokenizer_dir is not None:
        copy_tokenizer(tokenizer_dir, out)
    return out
