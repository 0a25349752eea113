"""Helpers of the serving tests: test texts, tiny models of several architectures, a plain greedy loop."""

from __future__ import annotations

import torch

from tokenmill.model import ModelConfig, build_model
from tokenmill.tokenizer import Tokenizer

# Written for these tests: a shared system prompt, and text in more than one script so that
# some tokens are parts of a character.
EXTRA = [
    "You are a helpful assistant. Answer briefly and cite the language reference when you can.",
    "Größe, Straße, café, naïve; Все люди рождаются свободными; "
    "人人生而自由; 👍🏽 ✔︎",
]

# Architectures that reach the cache differently: RoPE with grouped-query attention, a learned
# position table, ALiBi, and a sliding window shorter than the sequences.
ARCHITECTURES = {
    "llama": dict(position="rope", n_kv_heads=2, mlp="swiglu", norm="rmsnorm"),
    "gpt2": dict(position="learned", mlp="gelu", norm="layernorm", bias=True),
    "bloom": dict(position="alibi", mlp="gelu", norm="layernorm", embedding_norm=True),
    "mistral": dict(position="rope", n_kv_heads=1, sliding_window=24),
    # Sliding-window layers alternating with global ones, soft-capped scores and logits, post-norms.
    "gemma2": dict(n_kv_heads=2, mlp="geglu", gelu_approx="tanh", norm_unit_offset=True, scale_embeddings=True,
                   post_norms=True, sliding_window=12, sliding_window_pattern=2, query_pre_attn_scalar=24,
                   attn_logit_softcap=5.0, final_logit_softcap=3.0),
    # ... and with q/k norms and a RoPE base of their own in the local layers instead of soft-capping.
    "gemma3": dict(n_kv_heads=2, mlp="geglu", gelu_approx="tanh", norm_unit_offset=True, scale_embeddings=True,
                   post_norms=True, qk_norm=True, sliding_window=12, sliding_window_pattern=2, rope_local_theta=100.0),
}


def tiny_model(tokenizer: Tokenizer, arch: str = "llama", context_length: int = 160, seed: int = 0):
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, context_length=context_length, d_model=64, n_layers=2, n_heads=4,
        init_std=0.1, **ARCHITECTURES[arch],
    )
    torch.manual_seed(seed)
    return build_model(config, device="cpu").eval()


@torch.no_grad()
def reference_greedy(model, prompt: list[int], max_tokens: int, stop_ids: set[int] = frozenset()) -> list[int]:
    """The plainest greedy loop: the whole sequence through the model for every token, no cache."""
    ids = list(prompt)
    for _ in range(max_tokens):
        token = int(model(torch.tensor([ids]))[0, -1].argmax())
        ids.append(token)
        if token in stop_ids:
            break
    return ids[len(prompt):]
