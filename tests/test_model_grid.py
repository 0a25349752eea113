"""Every architectural switch, run: forward, backward, KV-cached decoding equal to the uncached forward.

The main grid is the full product attention kind × position × norm × norm place × MLP × tying
(3 × 4 × 2 × 2 × 5 × 2 = 480 tiny cases, about 10 ms each). The switches that the families
add (parallel blocks, Gemma's norm and embedding scale, BLOOM's embedding norm, biases,
sliding window, RoPE scaling, partial rotary, ...) are toggled one at a time on top.
"""

import itertools

import pytest
import torch

from tokenmill.model.config import ModelConfig
from tokenmill.model.kv_cache import KVCache
from tokenmill.model.transformer import Transformer

pytestmark = pytest.mark.usefixtures("one_thread")


BASE = dict(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4, d_ff=48)


def check_model(config: ModelConfig, seq: int = 7, prefill: int = 4) -> None:
    torch.manual_seed(0)
    model = Transformer(config)
    ids = torch.randint(0, config.vocab_size, (2, seq))

    logits = model(ids)
    assert logits.shape == (2, seq, config.vocab_size)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} gets no gradient"

    model.eval()
    with torch.no_grad():
        full = model(ids)
        # The explicit attention path (probabilities returned) computes the same function as SDPA.
        explicit, attns = model(ids, return_attn=True)
        cache = KVCache(config, batch_size=2, max_len=config.context_length)
        steps = [model(ids[:, :prefill], positions=torch.arange(prefill), cache=cache)]
        for i in range(prefill, seq):
            steps.append(model(ids[:, i : i + 1], positions=torch.tensor([i]), cache=cache))
    torch.testing.assert_close(explicit, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert len(attns) == config.n_layers and attns[0].shape == (2, config.n_heads, seq, seq)
    torch.testing.assert_close(attns[0].sum(-1), torch.ones(2, config.n_heads, seq))
    assert attns[0][0, 0].triu(1).abs().max() == 0  # causal: nothing from the future


GRID = list(itertools.product(
    [4, 2, 1],  # n_kv_heads: MHA, GQA, MQA
    ["learned", "sinusoidal", "rope", "alibi"],
    ["layernorm", "rmsnorm"],
    ["pre", "post"],
    ["gelu", "relu", "relu2", "swiglu", "geglu"],
    [True, False],
))


@pytest.mark.parametrize("n_kv_heads,position,norm,norm_place,mlp,tie", GRID)
def test_grid(n_kv_heads, position, norm, norm_place, mlp, tie):
    config = ModelConfig(**BASE, n_kv_heads=n_kv_heads, position=position, norm=norm, norm_place=norm_place,
                         mlp=mlp, tie_embeddings=tie)
    assert config.attention_kind == {4: "MHA", 2: "GQA", 1: "MQA"}[n_kv_heads]
    check_model(config)


EXTRA = {
    "parallel": dict(parallel_block=True),
    "parallel-shared-norm": dict(parallel_block=True, parallel_shared_norm=True, norm="layernorm"),
    "gemma-norm-and-scale": dict(norm_unit_offset=True, scale_embeddings=True, mlp="geglu", gelu_approx="tanh"),
    "embedding-norm": dict(embedding_norm=True, position="alibi", norm="layernorm"),
    "bias": dict(bias=True),
    "layernorm-without-bias": dict(norm="layernorm", norm_bias=False),
    "gelu-tanh": dict(mlp="gelu", gelu_approx="tanh"),
    "sliding-window": dict(sliding_window=3),
    "sliding-window-alibi": dict(sliding_window=2, position="alibi"),
    "rope-linear": dict(rope_scaling="linear", rope_factor=2.0),
    "rope-ntk": dict(rope_scaling="ntk", rope_factor=4.0),
    "rope-yarn": dict(rope_scaling="yarn", rope_factor=4.0, rope_original_context=4),
    "partial-rotary": dict(rotary_pct=0.5, rope_theta=500.0),
    "head-dim": dict(head_dim=12, n_kv_heads=2),
    "non-power-of-two-alibi": dict(position="alibi", n_heads=6, d_model=36, n_kv_heads=3),
    "rope-llama3": dict(rope_scaling="llama3", rope_factor=8.0, rope_original_context=8, rope_low_freq_factor=1.0,
                        rope_high_freq_factor=4.0, rope_theta=100.0),
    "qkv-bias": dict(qkv_bias=True),
    "qk-norm": dict(qk_norm=True, n_kv_heads=2),
    "qk-norm-unit-offset": dict(qk_norm=True, norm_unit_offset=True),
    "query-pre-attn-scalar": dict(query_pre_attn_scalar=32),
    "attn-logit-softcap": dict(attn_logit_softcap=1.0, n_kv_heads=2),
    "final-logit-softcap": dict(final_logit_softcap=1.0),
    "post-norms": dict(post_norms=True),
    "sliding-window-pattern": dict(sliding_window=3, sliding_window_pattern=2),
    "rope-local-theta": dict(sliding_window=3, sliding_window_pattern=2, rope_local_theta=100.0),
    "gemma2": dict(n_kv_heads=2, mlp="geglu", gelu_approx="tanh", norm_unit_offset=True, scale_embeddings=True,
                   post_norms=True, sliding_window=3, sliding_window_pattern=2, query_pre_attn_scalar=16,
                   attn_logit_softcap=2.0, final_logit_softcap=3.0),
    "gemma3": dict(n_kv_heads=2, mlp="geglu", gelu_approx="tanh", norm_unit_offset=True, scale_embeddings=True,
                   post_norms=True, qk_norm=True, sliding_window=3, sliding_window_pattern=2, rope_local_theta=100.0,
                   rope_scaling="linear", rope_factor=8.0, query_pre_attn_scalar=16),
}


@pytest.mark.parametrize("switch", EXTRA)
def test_extra_switch(switch):
    check_model(ModelConfig(**{**BASE, **EXTRA[switch]}))


def test_switches_change_the_function():
    """Each extra switch must actually do something: the logits differ from the base model's."""
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))  # NTK moves little: fixed ids

    def logits(**fields):
        torch.manual_seed(0)
        model = Transformer(ModelConfig(**{**BASE, **fields})).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():  # norms away from 1 and biases away from 0
                if "norm" in name or name.endswith("bias"):
                    p.add_(torch.randn_like(p) * 0.5)
            return model(ids)

    base = logits()
    for switch, fields in EXTRA.items():
        if switch in ("head-dim", "non-power-of-two-alibi"):
            continue  # different shapes, not a different function of the same weights
        assert not torch.allclose(logits(**fields), base, atol=1e-4), f"{switch} changes nothing"


def test_dropout_trains_and_evaluates_deterministically():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**BASE, dropout=0.5))
    ids = torch.randint(0, 64, (2, 8))
    assert not torch.equal(model(ids), model(ids))  # training: dropout active
    model.eval()
    torch.testing.assert_close(model(ids), model(ids))
    check_model(ModelConfig(**BASE, dropout=0.5))


def test_ragged_batch_decoding_with_per_row_positions():
    """Two sequences of different lengths share one cache: row 1 overwrites its padding as it goes."""
    config = ModelConfig(**BASE, n_kv_heads=2, sliding_window=4)
    torch.manual_seed(0)
    model = Transformer(config).eval()
    a, b = torch.randint(0, 64, (6,)), torch.randint(0, 64, (4,))
    with torch.no_grad():
        cache = KVCache(config, batch_size=2, max_len=16)
        padded_b = torch.cat([b[:3], torch.tensor([7, 7])])  # two padding tokens at positions 3, 4
        model(torch.stack([a[:5], padded_b]), positions=torch.arange(5), cache=cache)
        step = model(torch.stack([a[5:6], b[3:4]]), positions=torch.tensor([[5], [3]]), cache=cache)
        torch.testing.assert_close(step[0, -1], model(a[None])[0, -1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(step[1, -1], model(b[None])[0, -1], atol=1e-5, rtol=1e-5)


def test_cache_overflow_is_an_error():
    config = ModelConfig(**BASE)
    model = Transformer(config).eval()
    cache = KVCache(config, batch_size=1, max_len=4)
    with pytest.raises(ValueError, match="does not fit a KV cache of 4"):
        model(torch.zeros(1, 5, dtype=torch.long), positions=torch.arange(5), cache=cache)


def test_the_cache_keeps_the_heads_and_dtype_it_is_given():
    """A tensor-parallel rank writes its own share of the heads; autocast writes bfloat16 keys."""
    config = ModelConfig(**BASE)  # 4 key/value heads
    cache = KVCache(config, batch_size=2, max_len=8)
    k = torch.randn(2, 2, 3, config.head_dim, dtype=torch.bfloat16)  # one rank's 2 heads of 4
    keys, values = cache.update(0, k, k + 1, torch.arange(3))
    assert keys.dtype == torch.bfloat16 and torch.equal(keys, k) and torch.equal(values, k + 1)
    keys, _ = cache.update(0, k[:, :, :1], k[:, :, :1], torch.tensor([3]))
    assert keys.shape == (2, 2, 4, config.head_dim) and torch.equal(keys[:, :, :3], k)
