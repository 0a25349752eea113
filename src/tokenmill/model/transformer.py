"""One decoder-only transformer whose every architectural choice is a field of `ModelConfig`.

    logits = model(input_ids)                                  # (batch, seq, vocab)
    logits = model(ids, positions=pos, cache=kv_cache)         # decoding with a KV cache
    logits, attn = model(ids, return_attn=True)                # attn[layer]: (batch, heads, seq, keys)
    logits = model.head(model.hidden_states(ids)[0])           # the same, in two steps

Parameter names (`layers.3.attn.wqkv.weight`, `layers.3.ffn.w1.weight`, ...) follow Meta's
LLaMA code; `hf.py` maps them to each Hugging Face layout. How the model is parallelised is
not its business (see the pre-training package).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenmill.model.config import ModelConfig
from tokenmill.model.positions import alibi_slopes, apply_rope, rope_cos_sin, rope_frequencies, sinusoidal

Rope = tuple[torch.Tensor, torch.Tensor]  # cos and sin, (..., 1, T, rotary_dim)


class Norm(nn.Module):
    """LayerNorm or RMSNorm over the last `dim` (default d_model) features; RMSNorm computes in
    float32 as LLaMA and Gemma do."""

    def __init__(self, config: ModelConfig, dim: int | None = None) -> None:
        super().__init__()
        self.kind, self.eps, self.unit_offset = config.norm, config.norm_eps, config.norm_unit_offset
        dim = dim or config.d_model
        self.weight = nn.Parameter(torch.empty(dim))
        self.bias = nn.Parameter(torch.empty(dim)) if config.norm_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.unit_offset:
            nn.init.zeros_(self.weight)
        else:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "layernorm":
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.unit_offset:
            # Gemma scales before casting back; LLaMA casts, then scales.
            return (x32 * (1.0 + self.weight.float())).type_as(x)
        return self.weight * x32.type_as(x)


class AttentionMask:
    """The additive attention bias of one forward pass: causal, sliding window, ALiBi, and packing.

    Every layer attends to the same keys, so the bias is built once per key length and window
    (layers may differ in their window) and shared. None means plain causal attention over a
    fresh sequence, which SDPA does without a mask.
    With `segment_ids` (batch, seq), a row holds several packed examples and a token sees only
    the earlier tokens of its own example.
    """

    def __init__(
        self,
        positions: torch.Tensor,
        slopes: torch.Tensor | None,
        plain: bool,
        segment_ids: torch.Tensor | None = None,
    ) -> None:
        self.positions, self.slopes, self.plain = positions, slopes, plain
        self.segment_ids = segment_ids
        self.built: dict[tuple[int, torch.dtype, int | None], torch.Tensor] = {}

    def __call__(self, n_keys: int, dtype: torch.dtype, window: int | None = None) -> torch.Tensor | None:
        if self.plain and window is None:
            return None
        if (n_keys, dtype, window) not in self.built:
            if self.segment_ids is None:
                distance = self.positions[..., :, None] - torch.arange(n_keys, device=self.positions.device)  # (..., T, S)
                allowed = distance >= 0
            else:
                # Positions restart in each packed example, so distances come from the row index.
                index = torch.arange(n_keys, device=self.segment_ids.device)
                distance = index[:, None] - index  # (T, S)
                allowed = (distance >= 0) & (self.segment_ids[:, :, None] == self.segment_ids[:, None, :])
            if window is not None:
                allowed &= distance < window
            bias = torch.zeros(distance.shape, dtype=dtype, device=distance.device).masked_fill(~allowed, float("-inf"))
            bias = bias.unsqueeze(-3)  # a heads axis: (..., 1, T, S)
            if self.slopes is not None:
                bias = bias - (self.slopes[:, None, None] * distance.unsqueeze(-3)).to(dtype)
            self.built[(n_keys, dtype, window)] = bias if bias.dim() == 4 else bias.unsqueeze(0)
        return self.built[(n_keys, dtype, window)]


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """(batch, seq): each token's position inside its packed example (0 where an example starts)."""
    index = torch.arange(segment_ids.shape[-1], device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return index - torch.where(starts, index, 0).cummax(-1).values


def scaled_dot_product(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float | None = None,
    softcap: float | None = None,
    dropout: float = 0.0,
    return_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """softmax(q kᵀ · scale + bias) v, for q (..., heads, T, d) and k, v (..., kv_heads, S, d).

    `scale` defaults to 1/√d; `softcap` squashes the scores into (-cap, cap) before the bias
    (Gemma 2). SDPA computes it unless the probabilities are wanted or the scores are capped,
    which SDPA cannot do; then the product is written out, and needs a bias. A None bias is
    plain causal attention over a fresh sequence.
    """
    if not return_probs and softcap is None:
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=dropout, is_causal=bias is None, scale=scale,
            enable_gqa=q.shape[-3] != k.shape[-3],
        )
        return y, None
    groups = q.shape[-3] // k.shape[-3]
    k, v = k.repeat_interleave(groups, dim=-3), v.repeat_interleave(groups, dim=-3)
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    probs = (scores + bias).float().softmax(dim=-1).to(q.dtype)
    return F.dropout(probs, dropout, training=dropout > 0) @ v, probs


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.split = [self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.n_kv_heads * self.head_dim]
        # Q, K and V in one GEMM
        self.wqkv = nn.Linear(config.d_model, sum(self.split), bias=config.bias or config.qkv_bias)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=config.bias)
        self.q_norm = Norm(config, self.head_dim) if config.qk_norm else None
        self.k_norm = Norm(config, self.head_dim) if config.qk_norm else None
        self.window = config.layer_window(layer_idx)
        self.scale = None if config.query_pre_attn_scalar is None else config.query_pre_attn_scalar**-0.5
        self.softcap = config.attn_logit_softcap
        self.dropout = config.dropout

    def forward(
        self, x: torch.Tensor, rope: Rope | None, mask: AttentionMask, cache, positions: torch.Tensor, return_attn: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, seq, _ = x.shape
        q, k, v = self.wqkv(x).split(self.split, dim=-1)
        q = q.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if hasattr(cache, "attend"):
            # A paged cache attends over its own blocks (see kv_cache.py): its sequences share one row.
            y = cache.attend(self.layer_idx, q, k, v)
            return self.wo(y.transpose(1, 2).reshape(batch, seq, -1)), None
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v, positions)
        bias = mask(k.shape[-2], q.dtype, self.window)
        dropout = self.dropout if self.training else 0.0
        y, probs = scaled_dot_product(q, k, v, bias, self.scale, self.softcap, dropout, return_attn)
        return self.wo(y.transpose(1, 2).reshape(batch, seq, -1)), probs


class FeedForward(nn.Module):
    """w2(act(w1 x)), or w2(act(w1 x) * w3 x) when gated (SwiGLU, GeGLU; Shazeer, 2020)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind, self.approx = config.mlp, config.gelu_approx
        self.w1 = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.w2 = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.w3 = nn.Linear(config.d_model, config.d_ff, bias=config.bias) if config.gated else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.w1(x)
        if self.kind == "swiglu":
            h = F.silu(h)
        elif self.kind in ("gelu", "geglu"):
            h = F.gelu(h, approximate=self.approx)
        elif self.kind == "relu":
            h = F.relu(h)
        else:  # relu2: squared ReLU (So et al., 2021, Primer)
            h = F.relu(h).square()
        if self.w3 is not None:
            h = h * self.w3(x)
        return self.w2(h)


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.norm_place, self.parallel = config.norm_place, config.parallel_block
        self.attn_norm = Norm(config)
        self.attn = Attention(config, layer_idx)
        self.ffn_norm = None if config.parallel_shared_norm else Norm(config)
        self.ffn = FeedForward(config)
        # Gemma 2 and 3 normalise each branch's output as well as its input.
        self.attn_post_norm = Norm(config) if config.post_norms else None
        self.ffn_post_norm = Norm(config) if config.post_norms else None
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self, x: torch.Tensor, rope: Rope | None, mask: AttentionMask, cache, positions: torch.Tensor, return_attn: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.parallel:
            h = self.attn_norm(x)
            a, probs = self.attn(h, rope, mask, cache, positions, return_attn)
            m = self.ffn(h if self.ffn_norm is None else self.ffn_norm(x))
            return x + self.drop(a) + self.drop(m), probs
        if self.norm_place == "pre":
            a, probs = self.attn(self.attn_norm(x), rope, mask, cache, positions, return_attn)
            if self.attn_post_norm is not None:
                a = self.attn_post_norm(a)
            x = x + self.drop(a)
            m = self.ffn(self.ffn_norm(x))
            if self.ffn_post_norm is not None:
                m = self.ffn_post_norm(m)
            return x + self.drop(m), probs
        # Post-norm, as in the original Transformer: normalise each residual sum.
        a, probs = self.attn(x, rope, mask, cache, positions, return_attn)
        x = self.attn_norm(x + self.drop(a))
        return self.ffn_norm(x + self.drop(self.ffn(x))), probs


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        if config.position == "learned":
            self.pos_embeddings = nn.Embedding(config.context_length, config.d_model)
        self.embed_norm = Norm(config) if config.embedding_norm else None
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        # A post-norm stack already ends in a norm.
        self.norm = Norm(config) if config.norm_place == "pre" else None
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.tie_weights()
        if not self.tok_embeddings.weight.is_meta:  # a meta model is for shapes, or to be loaded into
            self.init_weights()

    def tie_weights(self) -> None:
        # A quantized head (QuantLinear) holds its own codes of the shared matrix: the embedding
        # lookup stays in full precision.
        if self.config.tie_embeddings and isinstance(self.output, nn.Linear):
            self.output.weight = self.tok_embeddings.weight

    def init_weights(self) -> None:
        """Normal(0, init_std) weights; residual projections scaled by 1/√(2·n_layers) (GPT-2)."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, Norm):
                module.reset_parameters()
            elif isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        for block in self.layers:
            for proj in (block.attn.wo, block.ffn.w2):
                nn.init.normal_(proj.weight, std=std / math.sqrt(2 * self.config.n_layers))
        self.init_buffers()

    def init_buffers(self, device: torch.device | str | None = None) -> None:
        """RoPE frequencies and ALiBi slopes, computed, never saved; call after loading onto a device."""
        device = device or self.tok_embeddings.weight.device
        self.rope_scale = 1.0
        if self.config.position == "rope":
            inv_freq, self.rope_scale = rope_frequencies(self.config)
            self.register_buffer("inv_freq", inv_freq.to(device), persistent=False)
            if self.config.rope_local_theta is not None:
                inv_freq, _ = rope_frequencies(self.config, local=True)
                self.register_buffer("inv_freq_local", inv_freq.to(device), persistent=False)
        if self.config.position == "alibi":
            self.register_buffer("alibi_slopes", alibi_slopes(self.config.n_heads).to(device), persistent=False)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache=None,
        return_attn: bool = False,
        segment_ids: torch.Tensor | None = None,
    ):
        """Logits (batch, seq, vocab); with `return_attn`, also each layer's attention probabilities.

        `positions` (seq,) or (batch, seq) default to 0..seq-1; a `cache` (see kv_cache.py) keeps
        the keys and values of earlier positions. `segment_ids` (batch, seq) mark packed examples
        (equal ids, one contiguous run each): attention stays inside an example and positions
        restart at 0 in each, so a packed row computes what its examples would alone.
        """
        h, attns = self.hidden_states(input_ids, positions, cache, return_attn, segment_ids)
        logits = self.head(h)
        return (logits, attns) if return_attn else logits

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """Logits of final hidden states: the output projection, soft-capped where the config says so."""
        logits = self.output(h)
        if self.config.final_logit_softcap is not None:
            cap = self.config.final_logit_softcap
            logits = torch.tanh(logits / cap) * cap
        return logits

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache=None,
        return_attn: bool = False,
        segment_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """The final hidden states (batch, seq, d_model) before the output head, and attentions."""
        config = self.config
        fresh = positions is None
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed examples) cannot be combined with a KV cache")
            if fresh:
                positions = segment_positions(segment_ids)
        elif fresh:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.tok_embeddings(input_ids)
        if config.scale_embeddings:
            x = x * torch.tensor(config.d_model**0.5, dtype=x.dtype)
        if config.position == "learned":
            x = x + self.pos_embeddings(positions)
        elif config.position == "sinusoidal":
            x = x + sinusoidal(positions, config.d_model).to(x.dtype)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        x = self.drop(x)
        rope = local_rope = None
        if config.position == "rope":
            cos, sin = rope_cos_sin(positions, self.inv_freq, self.rope_scale, x.dtype)
            rope = local_rope = (cos.unsqueeze(-3), sin.unsqueeze(-3))  # broadcast over heads
            if config.rope_local_theta is not None:
                cos, sin = rope_cos_sin(positions, self.inv_freq_local, 1.0, x.dtype)
                local_rope = (cos.unsqueeze(-3), sin.unsqueeze(-3))
        slopes = self.alibi_slopes if config.position == "alibi" else None
        plain = (
            fresh and cache is None and slopes is None and not return_attn and segment_ids is None
            and config.attn_logit_softcap is None  # the written-out product needs a mask
        )
        mask = AttentionMask(positions, slopes, plain, segment_ids)
        attns = []
        for layer in self.layers:
            layer_rope = rope if layer.attn.window is None else local_rope
            x, probs = layer(x, layer_rope, mask, cache, positions, return_attn)
            attns.append(probs)
        if self.norm is not None:
            x = self.norm(x)
        return x, attns
