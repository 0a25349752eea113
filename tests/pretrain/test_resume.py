"""Exact resume: a run killed with SIGKILL at a random step and resumed gives, bitwise, the per-step
losses and the final weights of a run that was never interrupted (CPU, float32, with dropout, so
that the RNG state has to come back too)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import pytest
import torch
from pretrain_runs import read_jsonl, step_losses, train_here, val_losses, worker_command, write_spec
from safetensors.torch import load_file

from tokenmill.pretrain.checkpoint import MARKER

STEPS = 40


def steps_logged(work) -> int:
    path = work / "metrics.jsonl"
    if not path.is_file():
        return 0
    lines = [line for line in path.read_text().split("\n")[:-1] if line]  # only whole lines
    return max((json.loads(line)["step"] for line in lines), default=0)


@pytest.fixture
def dropout_model(model_config):
    return model_config.model_copy(update={"dropout": 0.1})


def test_killed_run_resumes_bitwise(tmp_path, dropout_model, corpus):
    fields = dict(steps=STEPS, decay_end=1.0, checkpoint_every=3, keep_last=2, eval_every=7)
    whole = tmp_path / "whole" / "work"  # in this process: also one thread, the same sums
    train_here(dropout_model, corpus, whole, **fields)

    killed = tmp_path / "killed"
    spec = write_spec(killed, dropout_model, corpus, **fields)
    kill_at = random.randint(4, STEPS - 10)  # past the first checkpoint (step 3)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(worker_command([spec]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while steps_logged(killed / "work") < kill_at and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reached = steps_logged(killed / "work")
    assert proc.returncode == -signal.SIGKILL and reached < STEPS, f"the run ended before the kill at step {kill_at}"
    assert not (killed / "work" / "out").exists()

    # Resume here: nothing but the files of the killed run carries over.
    work = killed / "work"
    train_here(dropout_model, corpus, work, resume=True, **fields)
    resumed_from = [json.loads((p / MARKER).read_text())["step"] for p in (killed / "work" / "checkpoints").glob("step-*")]
    assert max(resumed_from) == STEPS
    context = f"killed at step {reached} (aimed at {kill_at})"
    assert step_losses(killed / "work") == step_losses(whole), context
    assert len(step_losses(whole)) == STEPS
    assert val_losses(killed / "work") == val_losses(whole), context
    assert [r["text"] for r in read_jsonl(killed / "work" / "samples.jsonl")] == [
        r["text"] for r in read_jsonl(whole / "samples.jsonl")
    ]
    a, b = load_file(whole / "out" / "model" / "model.safetensors"), load_file(work / "out" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), context
