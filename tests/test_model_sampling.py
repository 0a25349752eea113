"""The sampler against transformers' logits processors and OpenAI's penalty formula."""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tokenmill.model.sampling import SamplingParams, apply_penalties, warp


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 0, 1.0), (1.0, 20, 1.0), (1.3, 0, 0.8), (0.5, 40, 0.9)])
def test_warping_matches_transformers(temperature, top_k, top_p):
    logits = torch.randn(4, 300, generator=torch.Generator().manual_seed(top_k))
    ours = torch.stack([warp(row, SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p)) for row in logits])
    theirs = TemperatureLogitsWarper(temperature)(None, logits)
    if top_k:
        theirs = TopKLogitsWarper(top_k)(None, theirs)
    if top_p < 1:
        theirs = TopPLogitsWarper(top_p)(None, theirs)
    assert torch.equal(ours.isinf(), theirs.isinf())
    assert torch.allclose(ours[~ours.isinf()], theirs[~theirs.isinf()])


def test_penalties_match_transformers_and_the_openai_formula():
    logits = torch.randn(300, generator=torch.Generator().manual_seed(1))
    prompt, output = [3, 5, 5, 7], [7, 9, 9, 9, 11]
    ours = apply_penalties(logits.clone(), SamplingParams(repetition_penalty=1.3), prompt, output)
    theirs = RepetitionPenaltyLogitsProcessor(1.3)(torch.tensor([prompt + output]), logits[None].clone())[0]
    assert torch.allclose(ours, theirs)
    # OpenAI: logit - count * frequency_penalty - (count > 0) * presence_penalty, over the output only.
    ours = apply_penalties(logits.clone(), SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), prompt, output)
    expected = logits.clone()
    for token, count in {7: 1, 9: 3, 11: 1}.items():
        expected[token] -= 0.25 * count + 0.5
    assert torch.allclose(ours, expected)
