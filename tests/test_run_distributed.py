"""`torchrun -m tokenmill run CONFIG` with 2 gloo processes: the first keeps the run folder, both
pre-train and run SFT, RM and DPO data-parallel, the first alone the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tokenmill.config import shipped_config

TINY = [
    "data.sources.0.max_bytes=1000000", "tokenizer.vocab_size=512", "model.context_length=64",
    "pretrain.steps=4", "pretrain.batch_tokens=512", "pretrain.micro_batch=4", "pretrain.warmup_steps=2",
    "pretrain.eval_every=2", "pretrain.eval_batches=2", "pretrain.checkpoint_every=2", "pretrain.golden_every=4",
    "pretrain.device=cpu", "align.builtin.train_items=48", "align.builtin.eval_items=16", "align.sft.steps=2",
    "align.sft.samples=1", "align.rm.steps=2", "align.dpo.steps=2", "align.methods=[rm,dpo]",
    "align.logging.backends=[]",
]


def test_torchrun_runs_the_pipeline_with_two_processes(tmp_path):
    sets = [arg for item in [f"run_dir={tmp_path / 'run'}", *TINY] for arg in ("--set", item)]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "tokenmill", "run", str(shipped_config("quickstart")), "--to", "06_align", *sets]
    result = subprocess.run(command, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert list(stages) == ["01_data", "02_curate", "03_tokenizer", "03_encode", "04_model", "05_pretrain", "06_align"]
    assert all(s["status"] == "done" for s in stages.values())
    assert result.stderr.count("[01_data] read raw text") == 1  # the first process alone logs and runs it
    align = tmp_path / "run" / "06_align"
    for method in ("sft", "rm", "dpo"):
        metrics = [json.loads(line) for line in (align / method / "metrics.jsonl").read_text().splitlines()]
        assert [m["processes"] for m in metrics] == [2, 2], method
    assert 0 <= stages["06_align"]["metrics"]["dpo_win_rate"] <= 1
    assert not list((tmp_path / "run").glob("*.tmp-*"))
