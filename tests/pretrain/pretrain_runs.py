"""Launching pre-training runs for the tests: one process, or several under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("worker.py")


def pretrain_fields(**overrides) -> dict:
    """A short run: 8 sequences of 32 tokens a step in micro-batches of 2, clipping active."""
    fields = dict(
        steps=10, batch_tokens=8 * 32, micro_batch=2, seq_len=32, lr=3e-3, warmup_steps=3, decay_end=10,
        grad_clip=0.5, eval_every=5, eval_batches=4, checkpoint_every=6, golden_every=None, sample_tokens=4,
    )
    fields.update(overrides)
    return fields


def write_spec(folder: Path, model_config, corpus, resume: bool = False, **overrides) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = {
        "model": model_config.model_dump(mode="json"),
        "pretrain": pretrain_fields(**overrides),
        "tokens": str(corpus["tokens"]),
        "tokenizer": str(corpus["tokenizer"]),
        "work": str(folder / "work"),
        "out": str(folder / "work" / "out"),
        "resume": resume,
    }
    path = folder / f"spec-{len(list(folder.glob('spec-*.json')))}.json"
    path.write_text(json.dumps(spec))
    return path


def worker_command(specs: list[Path], nproc: int = 1) -> list[str]:
    """Run the specs one after another in `nproc` processes (torchrun when more than one)."""
    launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [sys.executable, *launcher, str(WORKER), *map(str, specs)]


def launch(specs: list[Path], nproc: int = 1, timeout: float = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(worker_command(specs, nproc), capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stderr[-4000:]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def step_losses(work: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_jsonl(work / "metrics.jsonl") if "loss" in r}


def val_losses(work: Path) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_jsonl(work / "metrics.jsonl") if "val_loss" in r}


def train_here(model_config, corpus, work: Path, resume: bool = False, tokenizer: bool = True, **overrides) -> dict:
    """A run in this process (one thread, as in the workers): checkpoints and logs in `work`, outputs in work/out."""
    from tokenmill.pretrain.config import PretrainConfig
    from tokenmill.pretrain.loop import train

    config = PretrainConfig(**pretrain_fields(**overrides))
    return train(model_config, corpus["tokens"], corpus["tokenizer"] if tokenizer else None, config, work, work / "out", resume)
