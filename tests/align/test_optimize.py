"""The optimisation loop SFT, the reward model and DPO share: a step whose gradient is NaN is not
applied, neither to the weights nor to AdamW's moments, and training goes on from there."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from tokenmill.align.config import TrainConfig
from tokenmill.align.train import optimize
from tokenmill.model.config import ModelConfig
from tokenmill.model.io import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_nan_gradient_step_is_not_applied(tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=64, context_length=16, d_model=32, n_layers=2, n_heads=4), device="cpu")
    batches = [torch.randint(0, 64, (4, 16)) for _ in range(4)]
    weights: list[dict[str, torch.Tensor]] = []  # before each step
    calls = {"n": 0}
    poison = model.tok_embeddings.weight.register_hook(lambda g: g * math.nan if calls["n"] == 2 else g)

    def loss_fn(batch):
        calls["n"] += 1
        weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1)), {}

    config = TrainConfig(steps=4, warmup_steps=0, lr=1e-2, eval_every=100, device="cpu")
    metrics = optimize(model, batches, loss_fn, config, dict, tmp_path, "test")
    poison.remove()

    assert [m.get("skipped", False) for m in metrics] == [False, True, False, False]
    assert math.isnan(metrics[1]["grad_norm"]) and math.isfinite(metrics[1]["loss"])
    before, after = weights[1], weights[2]  # around step 2
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(weights[0]["norm.weight"], weights[1]["norm.weight"])  # step 1 moved
    assert not torch.equal(weights[2]["norm.weight"], weights[3]["norm.weight"])  # and step 3 again
    assert all(bool(torch.isfinite(v).all()) for v in model.state_dict().values())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m.get("skipped", False) for m in logged] == [False, True, False, False]
