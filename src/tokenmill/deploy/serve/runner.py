"""The model runner: one forward pass over every token of a step, with keys and values in the block pool.

As in vLLM, the step's tokens are laid end to end in one row, without padding: the linear
layers, which are most of the work, see each token once, whatever mix of decoding sequences
(one token each) and prompt chunks the step holds. Only attention needs to know which tokens
belong together, so the model hands it to the cache (`PagedKVCache.attend`): the cache writes
the new keys and values into their slots, gathers the blocks the step reads, and attends group
by group:

- decoding sequences sorted by length and taken a few at a time, so that a group pads each row
  only to the longest of a few rows of about its length. One padded tensor for the whole batch
  would make every row as long as the longest, and attention costs what it reads;
- each prompt chunk on its own, causal within the chunk, over its earlier blocks as well.

Each group's masks (causal, sliding window, ALiBi; one per window its layers use) come from the
model's own `AttentionMask`, and attention itself from the model's `scaled_dot_product`, so
that what a layer adds to attention (scale, soft-capping) is the same served as trained.
The pool holds, per layer, keys and values as (num_blocks, block_size, n_kv_heads, head_dim).
A sequence's result does not depend on the other sequences of the step, up to float rounding:
greedy tokens in float32 are the same alone or batched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tokenmill.deploy.serve.block_manager import NULL_BLOCK
from tokenmill.model.config import ModelConfig
from tokenmill.model.transformer import AttentionMask, Transformer, scaled_dot_product

# Decoding sequences per attention group. Fewer pad less but call attention more often; on a
# 2-core CPU, groups of 4, 8 and 16 measured alike, all far ahead of one group for the batch.
GROUP_ROWS = 8


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    """Keys and values of one token over all layers."""
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * torch.finfo(dtype).bits // 8


@dataclass
class Group:
    """`rows` sequences whose `width` query tokens each (rows · width in all, row after row, from
    `start` in the step) attend together over their first `n_keys` positions."""

    start: int
    rows: int
    width: int
    blocks: slice  # their block tables, padded to one length, in the gathered blocks
    n_keys: int
    masks: dict[int | None, torch.Tensor]  # by the sliding window of the layers that read it


class PagedKVCache:
    """The keys and values of one step, written and read through block tables."""

    def __init__(self, k_pool: list[torch.Tensor], v_pool: list[torch.Tensor],
                 scratch: tuple[torch.Tensor, torch.Tensor], slots: torch.Tensor, blocks: torch.Tensor,
                 groups: list[Group], model: Transformer) -> None:
        self.k_pool, self.v_pool, self.scratch = k_pool, v_pool, scratch
        self.layers = [layer.attn for layer in model.layers]  # each one's window, scale and soft-cap
        self.slots = slots  # token i of the step goes to slot slots[i]
        self.blocks, self.groups = blocks, groups  # the blocks each layer gathers, and who reads them

    def attend(self, layer_idx: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attention output (1, heads, tokens, head_dim) for the step's queries q (1, heads, tokens, head_dim),
        once the new keys and values k, v (1, kv_heads, tokens, head_dim) are in the pool."""
        kv_heads, dim = k.shape[1], k.shape[3]
        gathered = []
        for pool, new, scratch in zip((self.k_pool[layer_idx], self.v_pool[layer_idx]), (k, v), self.scratch):
            pool.view(-1, kv_heads, dim).index_copy_(0, self.slots, new[0].transpose(0, 1))
            # Whole blocks, as rows of a 2-D view, into a buffer that outlives the step: a fresh
            # tensor per layer would cost page faults on the CPU, and 4-D indexing is slower still.
            # Every layer reuses the buffer: its keys are consumed before the next layer runs.
            out = scratch[: self.blocks.numel()]
            gathered.append(torch.index_select(pool.view(pool.shape[0], -1), 0, self.blocks, out=out))
        heads, attn = q.shape[1], self.layers[layer_idx]
        y = []
        for g in self.groups:
            keys, values = (x[g.blocks].view(g.rows, -1, kv_heads, dim)[:, : g.n_keys].transpose(1, 2)
                            for x in gathered)
            query = q[0, :, g.start : g.start + g.rows * g.width].view(heads, g.rows, g.width, dim).transpose(0, 1)
            if g.width == 1:
                # The query heads that share a key head read its keys once, as one query each.
                query = query.reshape(g.rows, kv_heads, heads // kv_heads, dim)
            out, _ = scaled_dot_product(query, keys, values, g.masks[attn.window], attn.scale, attn.softcap)
            y.append(out.reshape(g.rows, heads, g.width, dim).transpose(0, 1).reshape(heads, g.rows * g.width, dim))
        return torch.cat(y, dim=1)[None]


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
        self.scratch = (torch.empty(0), torch.empty(0))  # gathered keys and values, grown to the largest step
        self.windows = {config.layer_window(i) for i in range(config.n_layers)}
        self.slopes = model.alibi_slopes if config.position == "alibi" else None

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
        """Run tokens [start, start + n) of each sequence; return the float32 logits of each one's last
        token (sequences, vocab)."""
        decode = sorted((i for i, n in enumerate(num_tokens) if n == 1), key=lambda i: starts[i])
        prefill = [i for i, n in enumerate(num_tokens) if n > 1]
        groups = [decode[a : a + GROUP_ROWS] for a in range(0, len(decode), GROUP_ROWS)] + [[i] for i in prefill]
        bs, tensor = self.block_size, lambda x: torch.tensor(x, dtype=torch.long, device=self.device)
        ids, positions, slots, blocks, plan = [], [], [], [], []
        last = [0] * len(token_ids)  # where each sequence's last token is in the step
        for rows in groups:
            width = num_tokens[rows[0]]  # a group is all decoding (width 1) or one prompt chunk
            n_keys = max(starts[i] + width for i in rows)
            n_blocks = -(-n_keys // bs)
            where = [list(range(starts[i], starts[i] + width)) for i in rows]
            group_start, first_block = len(ids), len(blocks)
            for i, pos in zip(rows, where):
                table = tables[i]
                ids += token_ids[i][pos[0] : pos[-1] + 1]
                positions += pos
                slots += [table[p // bs] * bs + p % bs for p in pos]
                used = -(-(pos[-1] + 1) // bs)
                blocks += table[:used] + [NULL_BLOCK] * (n_blocks - used)  # padding: zeros, and masked
                last[i] = len(ids) - 1
            mask = AttentionMask(tensor(where), self.slopes, plain=False)
            masks = {window: mask(n_keys, self.dtype, window) for window in self.windows}
            if width == 1 and self.slopes is not None:  # one bias per query head (ALiBi), as the folded queries see them
                masks = {w: m.view(len(rows), self.model.config.n_kv_heads, -1, n_keys) for w, m in masks.items()}
            plan.append(Group(group_start, len(rows), width, slice(first_block, len(blocks)), n_keys, masks))
        blocks = tensor(blocks)
        cache = PagedKVCache(self.k_pool, self.v_pool, self._scratch(len(blocks)), tensor(slots), blocks, plan,
                             self.model)
        h, _ = self.model.hidden_states(tensor([ids]), tensor([positions]), cache)
        return self.model.head(h[0, tensor(last)]).float()
