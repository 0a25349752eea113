"""SFT, the reward model and DPO under torchrun: two gloo processes, each on half of every batch,
take the steps one process takes on the whole batch (figures and weights within 1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tokenmill.align.packing import Batch, shard

PAIRS = [
    {"prompt": [{"role": "user", "content": f"What does the command {name} do?"}],
     "chosen": f"{name}: {good}", "rejected": f"{name}: {bad}"}
    for name, good, bad in [
        ("wibble", "Print a line of wibbles.", "Drop a file into the nearest bucket."),
        ("plonk", "Drop a file into a bucket.", "Sing."),
        ("heapq.heappush", "Push item onto heap, maintaining the heap invariant.", "Sort a list."),
        ("shlex.split", "Split the string s using shell-like syntax.", "Join words."),
    ]
]


def tokenmill(args: list[str], processes: int, cwd: Path) -> None:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launcher, "-m", "tokenmill", *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("verb", ["sft", "rm", "dpo"])
def test_two_processes_take_the_steps_of_one(verb, model_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    records = PAIRS if verb != "sft" else [
        {"messages": [*p["prompt"], {"role": "assistant", "content": p["chosen"]}]} for p in PAIRS]
    data.write_text("".join(json.dumps(r) + "\n" for r in records * 2))
    settings = ["--set", "steps=3", "--set", "batch_size=4", "--set", "device=cpu", "--set", "warmup_steps=1",
                "--set", "logging.backends=[]", "--set", "lr=1e-4"]
    if verb == "sft":
        settings += ["--set", "samples=0"]
    outs = {}
    for n in (1, 2):
        outs[n] = tmp_path / f"out{n}"
        tokenmill([verb, str(model_dir), "--train", str(data), "--eval", str(data), "-o", str(outs[n]), *settings], n, tmp_path)
    one, two = ([json.loads(line) for line in (outs[n] / "metrics.jsonl").read_text().splitlines()] for n in (1, 2))
    assert len(one) == len(two) == 3 and all(m["processes"] == 2 for m in two) and "processes" not in one[0]
    for a, b in zip(one, two):
        for key in a:
            if key != "elapsed_s":
                # abs 1e-5, or float32 rounding (1e-6 relative) of sums of hundreds of nats (logps_chosen)
                assert b[key] == pytest.approx(a[key], abs=1e-5, rel=1e-6), (a["step"], key)
    w1, w2 = (load_file(str(outs[n] / "model.safetensors")) for n in (1, 2))
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], atol=1e-5, rtol=0)
    start = load_file(str(model_dir / "model.safetensors"))
    assert any(not torch.equal(w1[k], start[k]) for k in start)  # it trained


def test_a_pair_batch_is_shared_by_pairs_and_a_row_batch_by_tokens():
    ids = torch.arange(12).reshape(6, 2)
    mask = torch.tensor([[0, 1]] * 6)
    pairs = Batch(ids, mask, torch.ones_like(ids), None)
    first, share = shard(pairs, 0, 2, paired=True)
    assert first.input_ids[:, 0].tolist() == [0, 2, 6, 8] and share == 2 / 3  # pairs 0 and 1, chosen then rejected
    rows = Batch(ids[:3], torch.tensor([[1, 1], [0, 1], [0, 0]]), torch.ones_like(ids[:3]), None)
    last, share = shard(rows, 1, 2, paired=False)
    assert last.input_ids[:, 0].tolist() == [4] and share == 0.0  # the third row, with no target token
