"""AWQ: exact scale folding in every architecture, lower error than RTN where activations have outliers."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tokenmill.deploy.quant.awq import ScalingGroup, apply_scale, clip_weight, scaling_groups, search_clip, search_scale
from tokenmill.deploy.quant.quantize import quantize_model
from tokenmill.deploy.quant.rtn import fake_quantize, rtn
from tokenmill.model import build_model, load_preset, tiny
from tokenmill.model.quant.grid import Scheme
from tokenmill.model.quant.linear import QuantLinear

# Pre-norm with SwiGLU and GQA, LayerNorm with biases and GELU, one shared norm and MQA (Falcon),
# post-norm with ReLU, RMSNorm with a unit offset (Gemma).
FAMILIES = {
    "tiny-mistral-7b": {"norm→qkv", "v→o", "norm→mlp", "up→down"},
    "tiny-gpt2": {"norm→qkv", "v→o", "norm→mlp"},
    "tiny-falcon-7b": {"norm→qkv,mlp", "v→o"},
    "tiny-transformer-base": {"v→o", "fc1→fc2"},
    "tiny-gemma-2b": {"norm→qkv", "v→o", "norm→mlp", "up→down"},
}


@pytest.mark.parametrize("preset", FAMILIES)
@torch.no_grad()
def test_folding_scales_leaves_the_model_unchanged(preset):
    torch.manual_seed(0)
    model = build_model(load_preset(preset), "cpu").eval()
    for p in model.parameters():  # norms away from 1 and biases away from 0
        p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, model.config.vocab_size, (2, 16))
    reference = model(ids)
    config = model.config
    for block in model.layers:
        groups = scaling_groups(block, config)
        assert {g.name for g in groups} == FAMILIES[preset]
        for g in groups:
            channels = config.n_kv_heads * config.head_dim if g.name == "v→o" else g.linears[0].in_features
            apply_scale(g, torch.rand(channels) * 4 + 0.1)
    changed = sum(not torch.equal(a, b) for a, b in zip(model.parameters(), build_model(config, "cpu").parameters()))
    assert changed > 0
    torch.testing.assert_close(model(ids), reference, rtol=1e-4, atol=1e-5)


def outlier_layer(seed: int = 0) -> tuple[torch.Tensor, nn.Linear]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 128, generator=g)
    x[:, torch.randperm(128, generator=g)[:6]] *= 30  # a few channels with large activations, as in LLMs
    layer = nn.Linear(128, 64, bias=False)
    layer.weight.data = torch.randn(64, 128, generator=g) * 0.05
    return x, layer


@torch.no_grad()
def test_awq_beats_rtn_on_a_layer_with_outlier_activations(monkeypatch):
    x, layer = outlier_layer()
    scheme = Scheme(4, 32, True)
    target = layer(x)
    rtn_error = float(((x @ fake_quantize(layer.weight, scheme).T - target) ** 2).mean())
    group = ScalingGroup("norm→fc", [layer], fold=lambda s: None)
    group.stats = x.abs().mean(0)
    s, alpha, loss = search_scale(group, lambda: layer(x), target, scheme, n_grid=20)
    assert alpha > 0 and loss < 0.7 * rtn_error
    # The search measured exactly what the folded, quantized layer computes on the rescaled input
    # (through the dequantize reference: the CPU kernel adds its bfloat16 rounding).
    monkeypatch.setattr(QuantLinear, "use_kernels", False)
    apply_scale(group, s)
    folded = QuantLinear.from_codes(*rtn(layer.weight, scheme), scheme)
    assert float(((folded(x / s) - target) ** 2).mean()) == pytest.approx(loss, rel=1e-4)


@torch.no_grad()
def test_clipping_search_never_hurts_and_helps_heavy_tails():
    torch.manual_seed(0)
    x = torch.randn(256, 128)
    w = torch.distributions.StudentT(2.0).sample((64, 128)) * 0.02  # heavy-tailed weights
    for scheme in (Scheme(4, 32, True), Scheme(4, 64, False)):
        layer = nn.Linear(128, 64, bias=False)
        layer.weight.data = w.clone()
        clip_weight(layer, search_clip(w, x, scheme), scheme)
        group = scheme.group(128)
        xg = x.view(256, -1, group)
        # Each row's share of the output from each group: never worse than unclipped (the search's first point).
        per_group = {name: torch.einsum("tgk,ogk->otg", xg, (q - w).view(64, -1, group)).pow(2).mean(1)
                     for name, q in (("clipped", fake_quantize(layer.weight, scheme)), ("plain", fake_quantize(w, scheme)))}
        assert (per_group["clipped"] <= per_group["plain"] * (1 + 1e-5) + 1e-12).all()
        assert per_group["clipped"].sum() < 0.97 * per_group["plain"].sum()


@torch.no_grad()
def test_awq_model_never_does_worse_than_rtn_per_group():
    torch.manual_seed(0)
    model = build_model(tiny(load_preset("mistral-7b")), "cpu").eval()
    calib = torch.randint(0, model.config.vocab_size, (8, 64))
    info = quantize_model(model, "awq", Scheme(4, 32, True), calib, batch_size=4, awq_grid=10)
    assert len(info["groups"]) == 2 * 4
    assert all(r["awq_error"] <= r["rtn_error"] for r in info["groups"].values())
    assert any(r["alpha"] > 0 for r in info["groups"].values())
    assert all(isinstance(m, QuantLinear) for n, m in model.layers.named_modules() if n.endswith(("wqkv", "wo", "w1", "w2", "w3")))
