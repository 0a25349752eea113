"""The loss-spike guard: a planted batch of garbage makes the loss jump; the run goes back to the
last golden checkpoint, skips that batch, and replays the steps in between exactly. A NaN
gradient is such a spike too, whatever the loss."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch
from pretrain_runs import read_jsonl, step_losses, train_here
from safetensors.torch import load_file

from tokenmill.pretrain import loop
from tokenmill.tokenizer.dataset import TokenDataset

SEQ_LEN, BATCH = 32, 8
FIELDS = dict(
    steps=24, lr=1e-2, warmup_steps=2, decay_end=1.0, eval_every=100, sample_tokens=0, checkpoint_every=4,
    golden_every=10, spike_factor=1.35, spike_window=4, spike_skip=1,
)


def plant(tokens_dir, positions: list[int], seed: int = 0) -> None:
    """Overwrite the windows of these batch positions with random tokens, in place. A window's
    first and last tokens are shared with its neighbours and stay as they were."""
    ds = TokenDataset(tokens_dir, "train", SEQ_LEN, seed)
    (shard,) = ds.shards
    tokens = np.memmap(shard.path, dtype=shard.tokens.dtype, mode="r+", offset=shard.tokens.offset, shape=shard.tokens.shape)
    rng = np.random.default_rng(0)
    for position in positions:
        for j in ds.sample_windows(position, BATCH):
            start = (ds.window(j).ctypes.data - shard.tokens.ctypes.data) // shard.tokens.itemsize
            tokens[start + 1 : start + SEQ_LEN] = rng.integers(8, 300, SEQ_LEN - 1)
    tokens.flush()


def planted(root, corpus, positions: list[int]):
    folder = root / "tokens"
    shutil.copytree(corpus["tokens"], folder)
    plant(folder, positions)
    return folder


def run(model_config, tokens, corpus, work):
    return train_here(model_config, {**corpus, "tokens": tokens}, work, **FIELDS)


@pytest.fixture(scope="module")
def both(tmp_path_factory, model_config, corpus):
    """The work folder and report of a run with garbage planted at batches 8 and 14."""
    root = tmp_path_factory.mktemp("both")
    return root, run(model_config, planted(root, corpus, [8, 14]), corpus, root)


def test_spike_rolls_back_to_golden_and_skips_the_batch(tmp_path, both, model_config, corpus):
    # Batch 8 spikes (at step 9) before any golden checkpoint: it is only dropped. Batch 14
    # spikes (at step 14) after the golden checkpoint of step 10: the run returns there,
    # replays steps 11-13 and carries on with batch 15.
    reference = run(model_config, planted(tmp_path, corpus, [8]), corpus, tmp_path / "early")
    work, report = both

    events = read_jsonl(work / "events.jsonl")
    assert [(e["step"], e["position"]) for e in events] == [(9, 8), (14, 14)]
    assert events[0]["skipped"] == [8, 8] and "no golden" in events[0]["action"]
    assert events[1]["golden_step"] == 10 and events[1]["skipped"] == [14, 14]
    for e in events:
        assert e["loss"] > FIELDS["spike_factor"] * e["running_mean"]
    assert report["spikes"] == {"rollbacks": 2, "skipped": [[8, 8], [14, 14]]}
    assert reference["spikes"]["skipped"] == [[8, 8]]

    metrics = [r for r in read_jsonl(work / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in metrics] == list(range(1, 25))  # the log reads as one run
    assert [r["position"] for r in metrics] == [*range(8), *range(9, 14), *range(15, 26)]
    # Steps 1-13 (11-13 replayed after the rollback) are exactly those of the run without the second spike.
    spiked, early = step_losses(work), step_losses(tmp_path / "early")
    assert [spiked[s] for s in range(1, 14)] == [early[s] for s in range(1, 14)]
    assert spiked[14] != early[14]  # from there on the runs saw different batches
    assert max(spiked.values()) < min(e["loss"] for e in events)  # no spiked step was kept


@pytest.fixture
def nan_gradients(monkeypatch):
    """The batch positions (a set to fill) whose gradients come out NaN, through a hook on the
    token embedding's gradient; their loss is as it would be."""
    positions: set[int] = set()
    now = {"position": None}

    class Watched(TokenDataset):
        def batch(self, position, *args, **kwargs):
            now["position"] = position
            return super().batch(position, *args, **kwargs)

    def build(*args, **kwargs):
        model = build_model(*args, **kwargs)
        model.tok_embeddings.weight.register_hook(lambda g: g * math.nan if now["position"] in positions else g)
        return model

    build_model = loop.build_model
    monkeypatch.setattr(loop, "TokenDataset", Watched)
    monkeypatch.setattr(loop, "build_model", build)
    return positions


def test_a_nan_gradient_is_not_applied_and_rolls_back_as_a_spike_does(tmp_path, both, nan_gradients, model_config, corpus):
    # Clean batches, but NaN gradients at batches 8 and 14: the same skips and the same rollback
    # as garbage there, so the run is, step for step and bit for bit, the planted one.
    nan_gradients.update({8, 14})
    report = run(model_config, corpus["tokens"], corpus, tmp_path)

    events = read_jsonl(tmp_path / "events.jsonl")
    assert [(e["step"], e["position"]) for e in events] == [(9, 8), (14, 14)]
    assert all(math.isnan(e["grad_norm"]) and math.isfinite(e["loss"]) for e in events)
    assert "no golden" in events[0]["action"] and events[1]["golden_step"] == 10
    assert report["spikes"] == {"rollbacks": 2, "skipped": [[8, 8], [14, 14]]}
    work, _ = both
    assert step_losses(tmp_path) == step_losses(work)
    ours, planted_run = (load_file(w / "out" / "model" / "model.safetensors") for w in (tmp_path, work))
    assert all(torch.equal(ours[k], planted_run[k]) and bool(torch.isfinite(ours[k]).all()) for k in ours)
