"""Batched KV-cached sampling: the same tokens as a plain loop without a cache, whatever the padding."""

from __future__ import annotations

import pytest
import torch
from rl_helpers import ARCHITECTURES, load_tokenizer, tiny_model, train_tiny_tokenizer

from tokenmill.align.generate import generate
from tokenmill.errors import TokenmillError


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory, one_thread):
    return load_tokenizer(train_tiny_tokenizer(tmp_path_factory.mktemp("gen")))


@pytest.fixture(scope="module")
def prompts(tiny_tokenizer):
    questions = ["What is a lambda?", "Explain the with statement in one line, please.", "Hi"]
    return [tiny_tokenizer.encode_chat([{"role": "user", "content": q}], add_generation_prompt=True).ids for q in questions]


@torch.no_grad()
def greedy_without_cache(model, prompt: list[int], max_new: int, stop: set[int]) -> list[int]:
    ids = list(prompt)
    for _ in range(max_new):
        ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
        if ids[-1] in stop:
            break
    return ids[len(prompt):]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_batched_greedy_matches_a_loop_without_cache(tiny_tokenizer, prompts, arch):
    model = tiny_model(tiny_tokenizer.vocab_size, arch)
    out = generate(model, prompts, max_new_tokens=20, temperature=0, pad_id=tiny_tokenizer.pad_id)
    for i, p in enumerate(prompts):
        assert out.response_ids(i) == greedy_without_cache(model, p, 20, set())
        assert out.sequences[i, : len(p)].tolist() == p
    assert out.response_lengths.tolist() == [20, 20, 20]


def test_a_row_stops_at_its_first_stop_token_and_the_rest_is_padding(tiny_tokenizer, prompts):
    model = tiny_model(tiny_tokenizer.vocab_size)
    free = generate(model, prompts, max_new_tokens=20, temperature=0)
    stop = free.response_ids(0)[4]  # row 0 draws it at step 5 (or earlier)
    out = generate(model, prompts, max_new_tokens=20, temperature=0, stop_ids={stop}, pad_id=tiny_tokenizer.pad_id)
    for i, p in enumerate(prompts):
        expected = greedy_without_cache(model, p, 20, {stop})
        assert out.response_ids(i) == expected
        assert bool(out.stopped[i]) == (expected[-1] == stop)
        assert out.response_ids(i, strip_stop=True) == (expected[:-1] if expected[-1] == stop else expected)
        end = len(p) + len(expected)
        assert (out.sequences[i, end:] == tiny_tokenizer.pad_id).all()
        assert out.attention_mask[i].tolist() == [1] * end + [0] * (out.sequences.shape[1] - end)
        assert out.response_mask[i].tolist() == [0] * len(p) + [1] * len(expected) + [0] * (out.sequences.shape[1] - end)
    assert bool(out.stopped[0]) and int(out.response_lengths[0]) <= 5


@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_sampled_logprobs_are_those_of_one_forward_pass_over_the_padded_batch(tiny_tokenizer, prompts, arch):
    model = tiny_model(tiny_tokenizer.vocab_size, arch)
    g = torch.Generator().manual_seed(3)
    out = generate(model, prompts, max_new_tokens=16, temperature=1.0, stop_ids={tiny_tokenizer.end_id}, generator=g)
    with torch.no_grad():
        logp = model(out.sequences).log_softmax(-1)
    # log p(token t) is read from the logits at t - 1.
    expected = torch.zeros_like(out.logprobs)
    expected[:, 1:] = logp[:, :-1].gather(-1, out.sequences[:, 1:, None]).squeeze(-1)
    expected *= out.response_mask
    torch.testing.assert_close(out.logprobs, expected, atol=2e-5, rtol=0)
    again = generate(model, prompts, max_new_tokens=16, temperature=1.0, stop_ids={tiny_tokenizer.end_id},
                     generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.sequences, out.sequences)  # a seeded draw repeats


def test_top_k_draws_follow_the_renormalised_distribution(tiny_tokenizer, prompts):
    model = tiny_model(tiny_tokenizer.vocab_size)
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


def test_top_p_keeps_only_the_nucleus(tiny_tokenizer, prompts):
    model = tiny_model(tiny_tokenizer.vocab_size)
    with torch.no_grad():
        probs = model(torch.tensor([prompts[1]]))[0, -1].softmax(-1)
    sorted_probs, order = probs.sort(descending=True)
    # A top_p just above the most likely token's mass keeps exactly two tokens.
    p = float(sorted_probs[0]) + 1e-4
    out = generate(model, [prompts[1]] * 400, max_new_tokens=1, top_p=p, generator=torch.Generator().manual_seed(1))
    assert set(out.sequences[:, len(prompts[1])].tolist()) == set(order[:2].tolist())


def test_too_long_a_request_is_refused(tiny_tokenizer, prompts):
    model = tiny_model(tiny_tokenizer.vocab_size, context_length=32)
    with pytest.raises(TokenmillError, match="do not fit the model's context of 32"):
        generate(model, prompts, max_new_tokens=30)
    with pytest.raises(TokenmillError, match="no empty prompt"):
        generate(model, [[]], max_new_tokens=3)
