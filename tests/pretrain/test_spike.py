"""The loss-spike guard: a planted batch of garbage makes the loss jump; the run goes back to the
last golden checkpoint, skips that batch, and replays the steps in between exactly."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from pretrain_runs import read_jsonl, step_losses, train_here

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


@pytest.fixture
def planted(tmp_path, corpus):
    def copy(name: str, positions: list[int]):
        folder = tmp_path / name
        shutil.copytree(corpus["tokens"], folder)
        plant(folder, positions)
        return folder

    return copy


def run(model_config, tokens, corpus, work):
    return train_here(model_config, {**corpus, "tokens": tokens}, work, **FIELDS)


def test_spike_rolls_back_to_golden_and_skips_the_batch(tmp_path, planted, model_config, corpus):
    # Batch 8 spikes (at step 9) before any golden checkpoint: it is only dropped. Batch 14
    # spikes (at step 14) after the golden checkpoint of step 10: the run returns there,
    # replays steps 11-13 and carries on with batch 15.
    reference = run(model_config, planted("early", [8]), corpus, tmp_path / "early")
    report = run(model_config, planted("both", [8, 14]), corpus, tmp_path / "both")

    events = read_jsonl(tmp_path / "both" / "events.jsonl")
    assert [(e["step"], e["position"]) for e in events] == [(9, 8), (14, 14)]
    assert events[0]["skipped"] == [8, 8] and "no golden" in events[0]["action"]
    assert events[1]["golden_step"] == 10 and events[1]["skipped"] == [14, 14]
    for e in events:
        assert e["loss"] > FIELDS["spike_factor"] * e["running_mean"]
    assert report["spikes"] == {"rollbacks": 2, "skipped": [[8, 8], [14, 14]]}
    assert reference["spikes"]["skipped"] == [[8, 8]]

    metrics = [r for r in read_jsonl(tmp_path / "both" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in metrics] == list(range(1, 25))  # the log reads as one run
    assert [r["position"] for r in metrics] == [*range(8), *range(9, 14), *range(15, 26)]
    # Steps 1-13 (11-13 replayed after the rollback) are exactly those of the run without the second spike.
    both, early = step_losses(tmp_path / "both"), step_losses(tmp_path / "early")
    assert [both[s] for s in range(1, 14)] == [early[s] for s in range(1, 14)]
    assert both[14] != early[14]  # from there on the runs saw different batches
    assert max(both.values()) < min(e["loss"] for e in events)  # no spiked step was kept
