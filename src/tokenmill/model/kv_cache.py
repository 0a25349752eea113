"""The KV cache: keys and values of earlier tokens, kept so that decoding one token costs one token.

The model talks to a cache through one call, made by every attention layer:

    keys, values = cache.update(layer_idx, k, v, positions)

`k` and `v` are the new tokens' keys and values, (batch, n_kv_heads, T, head_dim), at
`positions` (T,) or (batch, T). The cache stores them and returns every key and value the new
tokens may attend to, (batch, n_kv_heads, S, head_dim), with the token at position p at index
p; the model masks what a query must not see (later positions, slots not yet written).

A cache may instead compute attention itself, when the model's mask cannot describe its layout:

    y = cache.attend(layer_idx, q, k, v)    # (batch, n_heads, T, head_dim), no probabilities

The serving engine's paged cache (deploy/serve/runner.py) does: it lays the tokens of many
sequences end to end in one row and reads each sequence's keys from its blocks.
"""

from __future__ import annotations

import torch

from tokenmill.model.config import ModelConfig


class KVCache:
    """One contiguous (batch, kv_heads, max_len, head_dim) buffer per layer for keys and for values.

    A layer's buffers are made at its first write, in the shape, dtype and device of what it
    writes: a tensor-parallel rank caches only its own heads, and keys computed under autocast
    stay in autocast's dtype."""

    def __init__(self, config: ModelConfig, batch_size: int, max_len: int | None = None) -> None:
        self.batch_size = batch_size
        self.max_len = max_len or config.context_length
        self.k: list[torch.Tensor | None] = [None] * config.n_layers
        self.v: list[torch.Tensor | None] = [None] * config.n_layers
        self.end = 0  # one past the furthest position written in the current step

    def update(
        self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if layer_idx == 0:
            # Every layer of one forward pass writes the same positions: look them up once.
            self.end = int(positions.max()) + 1
            if self.end > self.max_len:
                raise ValueError(f"position {self.end - 1} does not fit a KV cache of {self.max_len} tokens")
        if self.k[layer_idx] is None:
            shape = (self.batch_size, k.shape[1], self.max_len, k.shape[3])
            self.k[layer_idx] = k.new_zeros(shape)
            self.v[layer_idx] = v.new_zeros(shape)
        keys, values = self.k[layer_idx], self.v[layer_idx]
        if positions.dim() == 1:
            keys[:, :, positions] = k
            values[:, :, positions] = v
        else:
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            keys[rows, :, positions] = k.transpose(1, 2)
            values[rows, :, positions] = v.transpose(1, 2)
        return keys[:, :, : self.end], values[:, :, : self.end]
