"""Batches for training and validation, on top of `TokenDataset` (tokenizer/dataset.py).

Training batch `position` is the same for any layout: `TokenDataset.batch(position, per_rank,
rank, ranks)` gives data-parallel rank r the r-th slice of the windows drawn from (seed,
position). Domains are already mixed by the mixture weights in stage 02 (each document
repeated by its domain's weight), so drawing windows uniformly draws domains in the mixture's
proportions.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from tokenmill.tokenizer.dataset import TokenDataset
from tokenmill.tokenizer.tokens import open_token_shard, token_shard_paths


def val_batch(ds: TokenDataset, index: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation batch `index`: consecutive windows of the held-out split, wrapping around."""
    windows = np.stack([ds.window((index * size + k) % ds.n_windows) for k in range(size)])
    data = torch.from_numpy(windows.astype(np.int64)).to(device)
    return data[:, :-1], data[:, 1:]


def unigram_entropy(folder: str | Path, vocab_size: int, split: str = "train", max_tokens: int = 200_000_000) -> float:
    """Entropy in nats of the token frequencies: the loss of the best model that ignores context."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for path in token_shard_paths(folder, split):
        seen = int(counts.sum())
        if seen >= max_tokens:
            break
        counts += np.bincount(open_token_shard(path).tokens[: max_tokens - seen], minlength=vocab_size)[:vocab_size]
    total = counts.sum()
    if total == 0:
        return math.nan
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())
