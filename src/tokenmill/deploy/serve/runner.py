"""The model runner: one forward pass over the scheduled sequences, with their keys and values in the block pool.

The pool holds, per layer, keys and values as (num_blocks, block_size, n_kv_heads, head_dim).
For one pass, `PagedKVCache` answers the model's `cache.update(layer_idx, k, v, positions)`:
it writes the new tokens into their slots and gathers, through the block tables, each
sequence's keys and values in position order. The model's own mask hides a row's positions
past its end (padding, or the unwritten rest of its last block).

Rows are padded to a common length; decoding rows (one token) and prompt chunks run as two
separate passes, so that a prompt chunk does not pad every decoding row to its length. A
row's result does not depend on the other rows of its batch, up to float rounding: greedy
tokens in float32 are the same alone or batched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tokenmill.deploy.serve.block_manager import NULL_BLOCK
from tokenmill.model.config import ModelConfig
from tokenmill.model.transformer import Transformer


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    """Keys and values of one token over all layers."""
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * torch.finfo(dtype).bits // 8


class PagedKVCache:
    """The keys and values of one forward pass's rows, read and written through block tables."""

    def __init__(self, k_pool: list[torch.Tensor], v_pool: list[torch.Tensor],
                 scratch: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor, slots: torch.Tensor,
                 block_tables: torch.Tensor, n_keys: int) -> None:
        self.k_pool, self.v_pool, self.scratch = k_pool, v_pool, scratch
        self.rows, self.slots = rows, slots  # token i of the flattened batch rows[i] goes to slot slots[i]
        self.block_tables, self.n_keys = block_tables, n_keys

    def update(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, heads, seq, dim = k.shape
        out = []
        pools = (self.k_pool[layer_idx], self.v_pool[layer_idx])
        for pool, new, scratch in zip(pools, (k, v), self.scratch):
            flat = new.transpose(1, 2).reshape(batch * seq, heads, dim)
            pool.view(-1, heads, dim).index_copy_(0, self.slots, flat.index_select(0, self.rows))
            # Whole blocks, as rows of a 2-D view, into a buffer that outlives the pass: a fresh
            # tensor per layer would cost page faults on the CPU, and 4-D indexing is slower still.
            # Every layer reuses the buffer: its keys are consumed before the next layer runs.
            blocks = scratch[: self.block_tables.numel()]
            torch.index_select(pool.view(pool.shape[0], -1), 0, self.block_tables.flatten(), out=blocks)
            out.append(blocks.view(batch, -1, heads, dim)[:, : self.n_keys].transpose(1, 2))
        return out[0], out[1]


class ModelRunner:
    def __init__(self, model: Transformer, num_blocks: int, block_size: int) -> None:
        self.model, self.block_size = model, block_size
        config = model.config
        # The embedding sets the activations' dtype: a quantized model's linears hold integer codes.
        embedding = model.tok_embeddings.weight
        self.device, self.dtype = embedding.device, embedding.dtype
        shape = (num_blocks, block_size, config.n_kv_heads, config.head_dim)
        # Zeros, not empty: a masked key is multiplied by nothing, but NaN garbage would still leak.
        self.k_pool = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(config.n_layers)]
        self.v_pool = [torch.zeros(shape, device=self.device, dtype=self.dtype) for _ in range(config.n_layers)]
        self.scratch = (torch.empty(0), torch.empty(0))  # gathered keys and values, grown to the largest batch

    def _scratch(self, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.scratch[0].shape[0] < n_blocks:
            row = self.k_pool[0][0].numel()
            self.scratch = tuple(torch.empty(n_blocks, row, device=self.device, dtype=self.dtype) for _ in range(2))
        return self.scratch

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        if not copies:
            return
        source = torch.tensor([s for s, _ in copies], device=self.device)
        dest = torch.tensor([d for _, d in copies], device=self.device)
        for pool in (*self.k_pool, *self.v_pool):
            pool[dest] = pool[source]

    @torch.inference_mode()
    def execute(self, token_ids: Sequence[Sequence[int]], starts: Sequence[int], num_tokens: Sequence[int],
                tables: Sequence[Sequence[int]]) -> torch.Tensor:
        """Run tokens [start, start + n) of each row; return float32 logits of each row's last token (rows, vocab)."""
        decode = [i for i, n in enumerate(num_tokens) if n == 1]
        prefill = [i for i, n in enumerate(num_tokens) if n > 1]
        logits = torch.empty(len(token_ids), self.model.config.vocab_size, device=self.device)
        for group in (decode, prefill):
            if group:
                logits[group] = self._forward(
                    [token_ids[i] for i in group], [starts[i] for i in group],
                    [num_tokens[i] for i in group], [tables[i] for i in group],
                )
        return logits

    def _forward(self, token_ids, starts, num_tokens, tables) -> torch.Tensor:
        width, bs = max(num_tokens), self.block_size
        n_keys = max(s + n for s, n in zip(starts, num_tokens))
        n_blocks = -(-n_keys // bs)
        ids, positions, rows, slots, block_tables = [], [], [], [], []
        for r, (tokens, start, n, table) in enumerate(zip(token_ids, starts, num_tokens, tables)):
            pad = [0] * (width - n)  # padding: token 0 at position 0, written to the null block, never read
            ids.append(tokens[start : start + n] + pad)
            positions.append(list(range(start, start + n)) + pad)
            rows += range(r * width, r * width + n)
            slots += [table[p // bs] * bs + p % bs for p in range(start, start + n)]
            used = -(-(start + n) // bs)
            block_tables.append(table[:used] + [NULL_BLOCK] * (n_blocks - used))
        tensor = lambda x: torch.tensor(x, dtype=torch.long, device=self.device)  # noqa: E731
        block_tables = tensor(block_tables)
        cache = PagedKVCache(self.k_pool, self.v_pool, self._scratch(block_tables.numel()), tensor(rows), tensor(slots),
                             block_tables, n_keys)
        h, _ = self.model.hidden_states(tensor(ids), tensor(positions), cache)
        h = h[tensor(range(len(ids))), tensor(num_tokens) - 1]  # each row's last token
        return self.model.output(h).float()
