"""The learning-rate schedule at its phase boundaries, clipping, weight-decay groups, the batch plan."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
from pydantic import ValidationError

from tokenmill.errors import TokenmillError
from tokenmill.model import build_model, load_preset, tiny
from tokenmill.pretrain.config import PretrainConfig
from tokenmill.pretrain.guard import is_spike, skip_range
from tokenmill.pretrain.loop import plan_batch
from tokenmill.pretrain.optim import build_optimizer, clip_grads, decayed_names, grad_norm_squared
from tokenmill.pretrain.schedule import decay_end_step, lr_at
from tokenmill.pretrain.state import TrainState


def test_schedule_phase_boundaries():
    c = PretrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1, decay_end=0.5)
    steps = 100
    assert decay_end_step(c, steps) == 50
    # Warmup: linear, reaching the peak on its last step.
    assert lr_at(0, c, steps) == pytest.approx(0.1)
    assert lr_at(4, c, steps) == pytest.approx(0.5)
    assert lr_at(9, c, steps) == pytest.approx(1.0)
    # Cosine: the peak at its start, halfway down at its middle, the floor at its end.
    assert lr_at(10, c, steps) == pytest.approx(1.0)
    assert lr_at(30, c, steps) == pytest.approx(0.1 + 0.45)
    assert lr_at(49, c, steps) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 39 / 40)))
    assert lr_at(50, c, steps) == pytest.approx(0.1)
    # Constant tail at the floor.
    assert lr_at(51, c, steps) == lr_at(99, c, steps) == pytest.approx(0.1)
    lrs = [lr_at(s, c, steps) for s in range(10, 51)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))


def test_decay_end_as_a_step_and_without_warmup():
    c = PretrainConfig(steps=100, lr=2.0, warmup_steps=0, min_lr_ratio=0.0, decay_end=40)
    assert decay_end_step(c, 100) == 40 and decay_end_step(c, 1000) == 40
    assert lr_at(0, c, 100) == pytest.approx(2.0)
    assert lr_at(20, c, 100) == pytest.approx(1.0)
    assert lr_at(40, c, 100) == 0.0


def _with_grads(*grads):
    params = [nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def test_clipping_bounds_the_global_norm_as_torch_does():
    grads = [torch.tensor([3.0, 4.0]), torch.tensor([[12.0]]), torch.randn(5, 7)]
    ours, theirs = _with_grads(*grads), _with_grads(*grads)
    norm = math.sqrt(grad_norm_squared(ours).item())
    assert norm == pytest.approx(math.sqrt(169 + grads[2].square().sum().item()), rel=1e-6)
    clip_grads(ours, 1.0, norm)
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    assert torch_norm.item() == pytest.approx(norm, rel=1e-6)
    assert math.sqrt(grad_norm_squared(ours).item()) == pytest.approx(1.0, rel=1e-5)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a.grad, b.grad)
    # Below the threshold nothing changes.
    small = _with_grads(torch.tensor([0.3, 0.4]))
    clip_grads(small, 1.0, 0.5)
    assert torch.equal(small[0].grad, torch.tensor([0.3, 0.4]))


@pytest.mark.parametrize("decay_embeddings", [False, True])
def test_decay_groups(decay_embeddings):
    config = tiny(load_preset("gpt2"))  # learned positions, LayerNorm with bias, biased projections, tied head
    model = build_model(config, device="cpu")
    names = decayed_names(model, decay_embeddings)
    matrices = {f"layers.{i}.{m}.weight" for i in range(2) for m in ("attn.wqkv", "attn.wo", "ffn.w1", "ffn.w2")}
    embeddings = {"tok_embeddings.weight", "pos_embeddings.weight", "output.weight"}  # the head is the tied embedding
    assert names == (matrices | embeddings if decay_embeddings else matrices)
    assert not any("bias" in n or "norm" in n for n in names)

    pc = PretrainConfig(steps=1, weight_decay=0.5, lr=0.1)
    opt = build_optimizer(model.named_parameters(), names, pc, torch.device("cpu"))
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert decay[id(p)] == (0.5 if name in names else 0.0), name
    # Decoupled decay: with a zero gradient AdamW only shrinks the decayed weights, by lr × wd.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for name, p in model.named_parameters():
        expected = before[name] * (1 - 0.1 * 0.5) if name in names else before[name]
        torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=0)


def test_an_untied_head_is_decayed():
    config = tiny(load_preset("nano")).model_copy(update={"tie_embeddings": False})
    names = decayed_names(build_model(config, device="cpu"), False)
    assert "output.weight" in names and "tok_embeddings.weight" not in names


def test_batch_plan_and_its_errors():
    model = tiny(load_preset("nano"))  # context 64
    plan = plan_batch(PretrainConfig(batch_tokens=2048, micro_batch=4, tokens=10_000), model, dp_size=2)
    assert (plan.seq_len, plan.sequences, plan.per_rank, plan.accum, plan.steps) == (64, 32, 16, 4, 5)
    with pytest.raises(TokenmillError, match="not a multiple of micro_batch 3"):
        plan_batch(PretrainConfig(batch_tokens=2048, micro_batch=3), model, 1)
    with pytest.raises(TokenmillError, match="exceeds the model's context_length 64"):
        plan_batch(PretrainConfig(seq_len=128), model, 1)
    with pytest.raises(TokenmillError, match="try batch_tokens 1,024"):
        plan_batch(PretrainConfig(batch_tokens=1000, micro_batch=16), model, 1)  # not whole sequences
    assert plan_batch(PretrainConfig(batch_tokens=1024, micro_batch=16), model, 1).steps == 1000


def test_config_errors_name_the_key():
    with pytest.raises(ValidationError, match="lr_peak"):
        PretrainConfig(lr_peak=1e-3)
    with pytest.raises(ValidationError, match="not both"):
        PretrainConfig(steps=10, tokens=1000)
    with pytest.raises(ValidationError, match="betas"):
        PretrainConfig(betas=(0.9, 1.0))


def test_spike_guard_and_skipped_positions():
    config = PretrainConfig(spike_factor=2.0, spike_window=3, spike_skip=4)
    assert not is_spike(100.0, [1.0, 1.0], config)  # the window is not full yet
    assert not is_spike(1.9, [1.0, 1.0, 1.0], config)
    assert is_spike(2.1, [1.0, 1.0, 1.0], config)
    assert is_spike(float("nan"), [], config) and is_spike(float("inf"), [], config)
    assert not is_spike(1e9, [1.0] * 3, PretrainConfig(spike_factor=None))
    assert skip_range(20, 10, config) == [17, 20] and skip_range(11, 10, config) == [10, 11]
    state = TrainState(position=5, skipped=[[5, 6], [7, 7], [20, 30]])
    assert state.next_position() == 8
