"""Reading token shards for pre-training: fixed-length windows, deterministic and resumable.

Shard s holds windows k = 0, 1, ... of `seq_len + 1` tokens starting at token k * seq_len:
x is the first `seq_len` tokens, y the same shifted by one. Windows cross document
boundaries (each document is BOS ... EOS), as in GPT pre-training. Sample i of the training
stream is window perm_e[i mod N], where N is the number of windows, e = i // N the epoch and
perm_e a permutation drawn from (seed, e): every window once per epoch, and a batch is a pure
function of (seed, position). The sampler's whole state is therefore those two numbers;
resuming at a position gives exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer.encode import STATS_FILE
from tokenmill.tokenizer.tokens import TokenShard, open_token_shard, token_shard_paths


class TokenDataset:
    def __init__(self, folder: str | os.PathLike, split: str = "train", seq_len: int = 1024, seed: int = 0) -> None:
        self.folder = Path(folder)
        paths = token_shard_paths(self.folder, split)
        if not paths:
            raise TokenmillError(f"no {split} token shards ({split}-*.bin) in {self.folder}; run `tokenmill encode` first")
        if seq_len < 1:
            raise TokenmillError(f"seq_len must be at least 1, got {seq_len}")
        self.split, self.seq_len, self.seed = split, seq_len, seed
        self.shards: list[TokenShard] = [open_token_shard(p) for p in paths]
        counts = [max(len(s.tokens) - 1, 0) // seq_len for s in self.shards]
        self._first = np.cumsum([0] + counts)  # first window of each shard
        self.n_windows = int(self._first[-1])
        self.n_tokens = sum(len(s.tokens) for s in self.shards)
        if self.n_windows == 0:
            raise TokenmillError(
                f"the {split} split in {self.folder} has {self.n_tokens:,} tokens: too few for one window "
                f"of {seq_len + 1}; lower seq_len or encode more text"
            )
        stats = self.folder / STATS_FILE
        # The hash of the tokenizer that wrote these shards, for Tokenizer.check_hash.
        self.tokenizer_hash: str | None = json.loads(stats.read_text())["tokenizer"]["hash"] if stats.is_file() else None
        self._perms: dict[int, np.ndarray] = {}

    def window(self, j: int) -> np.ndarray:
        """Window j (0 <= j < n_windows) in shard order: seq_len + 1 tokens."""
        s = int(np.searchsorted(self._first, j, side="right")) - 1
        start = (j - int(self._first[s])) * self.seq_len
        return self.shards[s].tokens[start : start + self.seq_len + 1]

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # a batch spans at most two epochs
                self._perms.pop(min(self._perms))
            self._perms[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
        return self._perms[epoch]

    def sample_windows(self, position: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[int]:
        """Which windows make batch `position` of process `rank` out of `world_size`."""
        first = (position * world_size + rank) * batch_size
        return [int(self._permutation(i // self.n_windows)[i % self.n_windows]) for i in range(first, first + batch_size)]

    def batch(
        self, position: int, batch_size: int, rank: int = 0, world_size: int = 1, device: str | torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch `position` as (x, y), int64 tensors of shape (batch_size, seq_len)."""
        windows = [self.window(j) for j in self.sample_windows(position, batch_size, rank, world_size)]
        return _to_tensors(np.stack(windows), device)

    def sequential(self, batch_size: int, device: str | torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every window once, in order (for validation); the last batch may be smaller."""
        for first in range(0, self.n_windows, batch_size):
            windows = [self.window(j) for j in range(first, min(first + batch_size, self.n_windows))]
            yield _to_tensors(np.stack(windows), device)

    def __len__(self) -> int:
        return self.n_windows


def _to_tensors(windows: np.ndarray, device: str | torch.device | None) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.from_numpy(windows.astype(np.int64))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    if device is not None and torch.device(device).type == "cuda":
        x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    elif device is not None:
        x, y = x.to(device), y.to(device)
    return x, y
