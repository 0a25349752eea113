"""Batched KV-cached sampling: the same tokens as a plain loop without a cache, whatever the padding."""

from __future__ import annotations

import pytest
import torch

from tokenmill.errors import TokenmillError
from tokenmill.model import ModelConfig, build_model
from tokenmill.model.generate import fit_context, generate

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, PAD, STOP = 96, 0, 1
# Architectures that reach the KV cache differently: RoPE with grouped-query attention, a learned
# position table, ALiBi, and a sliding window shorter than the sequences.
ARCHITECTURES = {
    "llama": dict(position="rope", n_kv_heads=2, mlp="swiglu", norm="rmsnorm"),
    "gpt2": dict(position="learned", mlp="gelu", norm="layernorm", bias=True),
    "bloom": dict(position="alibi", mlp="gelu", norm="layernorm", embedding_norm=True),
    "mistral": dict(position="rope", n_kv_heads=1, sliding_window=12),
}


def tiny_model(arch: str = "llama", context_length: int = 96):
    config = ModelConfig(vocab_size=VOCAB, context_length=context_length, d_model=32, n_layers=2, n_heads=4,
                         init_std=0.1, **ARCHITECTURES[arch])
    torch.manual_seed(0)
    return build_model(config, device="cpu").eval()


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    """Three prompts of different lengths, none holding the pad or the stop id."""
    g = torch.Generator().manual_seed(0)
    return [torch.randint(2, VOCAB, (n,), generator=g).tolist() for n in (9, 23, 2)]


@torch.no_grad()
def greedy_without_cache(model, prompt: list[int], max_new: int, stop: set[int]) -> list[int]:
    ids = list(prompt)
    for _ in range(max_new):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        if ids[-1] in stop:
            break
    return ids[len(prompt):]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_batched_greedy_matches_a_loop_without_cache(prompts, arch):
    model = tiny_model(arch)
    out = generate(model, prompts, max_new_tokens=20, temperature=0, pad_id=PAD)
    for i, p in enumerate(prompts):
        assert out.response_ids(i) == greedy_without_cache(model, p, 20, set())
        assert out.sequences[i, : len(p)].tolist() == p
    assert out.response_lengths.tolist() == [20, 20, 20]


def test_a_row_stops_at_its_first_stop_token_and_the_rest_is_padding(prompts):
    model = tiny_model()
    free = generate(model, prompts, max_new_tokens=20, temperature=0)
    stop = free.response_ids(0)[4]  # row 0 draws it at step 5 (or earlier)
    out = generate(model, prompts, max_new_tokens=20, temperature=0, stop_ids={stop}, pad_id=PAD)
    for i, p in enumerate(prompts):
        expected = greedy_without_cache(model, p, 20, {stop})
        assert out.response_ids(i) == expected
        assert bool(out.stopped[i]) == (expected[-1] == stop)
        assert out.response_ids(i, strip_stop=True) == (expected[:-1] if expected[-1] == stop else expected)
        end = len(p) + len(expected)
        assert (out.sequences[i, end:] == PAD).all()
        assert out.attention_mask[i].tolist() == [1] * end + [0] * (out.sequences.shape[1] - end)
        assert out.response_mask[i].tolist() == [0] * len(p) + [1] * len(expected) + [0] * (out.sequences.shape[1] - end)
    assert bool(out.stopped[0]) and int(out.response_lengths[0]) <= 5


@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_sampled_logprobs_are_those_of_one_forward_pass_over_the_padded_batch(prompts, arch):
    model = tiny_model(arch)
    g = torch.Generator().manual_seed(3)
    out = generate(model, prompts, max_new_tokens=16, temperature=1.0, stop_ids={STOP}, generator=g)
    with torch.no_grad():
        logp = model(out.sequences).log_softmax(-1)
    # log p(token t) is read from the logits at t - 1.
    expected = torch.zeros_like(out.logprobs)
    expected[:, 1:] = logp[:, :-1].gather(-1, out.sequences[:, 1:, None]).squeeze(-1)
    expected *= out.response_mask
    torch.testing.assert_close(out.logprobs, expected, atol=2e-5, rtol=0)
    again = generate(model, prompts, max_new_tokens=16, temperature=1.0, stop_ids={STOP},
                     generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.sequences, out.sequences)  # a seeded draw repeats


def test_a_seeded_draw_leaves_the_global_rng_and_the_mode_as_they_were(prompts):
    """Pre-training samples during training: the training's random stream must not move."""
    model = tiny_model().train()
    state = torch.get_rng_state()
    generate(model, prompts, max_new_tokens=8, top_k=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert model.training


def test_top_k_draws_follow_the_renormalised_distribution(prompts):
    model = tiny_model()
    n = 6000
    out = generate(model, [prompts[0]] * n, max_new_tokens=1, temperature=0.7, top_k=3,
                   generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(torch.tensor([prompts[0]]))[0, -1] / 0.7
    top = logits.topk(3)
    expected = top.values.softmax(-1)
    drawn = out.sequences[:, len(prompts[0])]
    assert set(drawn.tolist()) <= set(top.indices.tolist())
    freq = torch.stack([(drawn == t).float().mean() for t in top.indices])
    assert (freq - expected).abs().max() < 4 * (0.25 / n) ** 0.5  # four standard errors at most


def test_top_p_keeps_only_the_nucleus(prompts):
    model = tiny_model()
    with torch.no_grad():
        probs = model(torch.tensor([prompts[1]]))[0, -1].softmax(-1)
    sorted_probs, order = probs.sort(descending=True)
    # A top_p just above the most likely token's mass keeps exactly two tokens.
    p = float(sorted_probs[0]) + 1e-4
    out = generate(model, [prompts[1]] * 400, max_new_tokens=1, top_p=p, generator=torch.Generator().manual_seed(1))
    assert set(out.sequences[:, len(prompts[1])].tolist()) == set(order[:2].tolist())


def test_under_autocast_the_cache_keeps_the_autocast_dtype(prompts):
    model = tiny_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, prompts, max_new_tokens=6, temperature=0)
    assert out.response_lengths.tolist() == [6, 6, 6]


def test_fit_context_keeps_the_prompt_and_shortens_the_sample():
    assert fit_context([5, 6, 7], 10, 64) == ([5, 6, 7], 10)
    assert fit_context(list(range(40)), 48, 64) == (list(range(40)), 24)  # stops where the context ends
    assert fit_context(list(range(100)), 48, 64) == (list(range(37, 100)), 1)  # the newest tokens of the prompt
    with pytest.raises(TokenmillError, match="context of 1 tokens"):
        fit_context([5], 4, 1)


def test_too_long_a_request_is_refused(prompts):
    model = tiny_model(context_length=32)
    with pytest.raises(TokenmillError, match="do not fit the model's context of 32"):
        generate(model, prompts, max_new_tokens=30)
    with pytest.raises(TokenmillError, match="no empty prompt"):
        generate(model, [[]], max_new_tokens=3)
