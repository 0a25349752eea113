"""TokenDataset: windows from the token stream, deterministic in (seed, position), resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer import EncodeConfig, Tokenizer, encode_corpus, open_token_shard, token_shard_paths
from tokenmill.tokenizer.dataset import TokenDataset


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, corpus, trained):
    out = tmp_path_factory.mktemp("tokens")
    encode_corpus(corpus, trained["bpe"], out, EncodeConfig(val_fraction=0.2, workers=1, shard_tokens=20_000))
    return out


def test_windows_are_the_token_stream(tokens):
    ds = TokenDataset(tokens, "train", seq_len=64)
    shards = [open_token_shard(p) for p in token_shard_paths(tokens, "train")]
    assert len(shards) > 1
    assert ds.n_windows == sum((len(s.tokens) - 1) // 64 for s in shards)
    expected = [s.tokens[k * 64 : k * 64 + 65] for s in shards for k in range((len(s.tokens) - 1) // 64)]
    assert all(np.array_equal(ds.window(j), w) for j, w in enumerate(expected))
    x, y = ds.batch(0, batch_size=8)
    assert x.shape == y.shape == (8, 64) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    picked = ds.sample_windows(0, 8)
    assert torch.equal(x, torch.tensor(np.stack([expected[j][:-1] for j in picked]).astype(np.int64)))


def test_same_seed_and_position_give_the_same_batch(tokens):
    run = TokenDataset(tokens, seq_len=32, seed=5)
    batches = [run.batch(p, 4) for p in range(30)]
    resumed = TokenDataset(tokens, seq_len=32, seed=5)  # a new process picking up at position 17
    for p in range(17, 30):
        x, y = resumed.batch(p, 4)
        assert torch.equal(x, batches[p][0]) and torch.equal(y, batches[p][1])
    other = TokenDataset(tokens, seq_len=32, seed=6)
    assert not torch.equal(other.batch(0, 4)[0], batches[0][0])


def test_each_epoch_sees_every_window_once(tokens):
    ds = TokenDataset(tokens, seq_len=256, seed=1)
    n, batch = ds.n_windows, 3
    steps = (2 * n) // batch + 1
    seen = [j for p in range(steps) for j in ds.sample_windows(p, batch)]
    assert sorted(seen[:n]) == list(range(n)) and sorted(seen[n : 2 * n]) == list(range(n))
    assert seen[:n] != seen[n : 2 * n]  # each epoch has its own order


def test_ranks_split_the_global_batch(tokens):
    """Two processes with batch 4 each see, together, what one process with batch 8 sees."""
    ds = TokenDataset(tokens, seq_len=128, seed=2)
    shared = [ds.sample_windows(3, 4, rank=r, world_size=2) for r in range(2)]
    assert not set(shared[0]) & set(shared[1])
    assert shared[0] + shared[1] == ds.sample_windows(3, 8)


def test_sequential_validation_batches(tokens):
    ds = TokenDataset(tokens, "val", seq_len=64)
    batches = list(ds.sequential(batch_size=5))
    assert sum(len(x) for x, _ in batches) == ds.n_windows
    assert all(len(x) == 5 for x, _ in batches[:-1]) and 1 <= len(batches[-1][0]) <= 5
    xs = torch.cat([x for x, _ in batches])
    assert torch.equal(xs, torch.tensor(np.stack([ds.window(j)[:-1] for j in range(ds.n_windows)]).astype(np.int64)))
    assert list(ds.sequential(batch_size=5))[0][0].equal(batches[0][0])


def test_tokenizer_hash_is_recorded(tokens, trained):
    ds = TokenDataset(tokens, seq_len=16)
    tok = Tokenizer.load(trained["bpe"])
    tok.check_hash(ds.tokenizer_hash)
    with pytest.raises(TokenmillError, match="was encoded with tokenizer"):
        Tokenizer.load(trained["spm-bpe"]).check_hash(ds.tokenizer_hash, what=f"token shards in {tokens}")


def test_device(tokens):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, y = TokenDataset(tokens, seq_len=16).batch(0, 2, device=device)
    assert x.device.type == y.device.type == device


def test_bad_inputs(tmp_path, tokens):
    with pytest.raises(TokenmillError, match="no train token shards"):
        TokenDataset(tmp_path)
    with pytest.raises(TokenmillError, match="too few for one window"):
        TokenDataset(tokens, "val", seq_len=10_000_000)
