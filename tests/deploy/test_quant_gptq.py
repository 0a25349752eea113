"""GPTQ: lower output error than RTN on correlated inputs, stable factorisation, exact lazy batching."""

from __future__ import annotations

import copy

import pytest
import torch

from tokenmill.deploy.quant.gptq import Hessian, gptq_quantize, inverse_hessian_factor
from tokenmill.deploy.quant.quantize import quantize_model
from tokenmill.deploy.quant.rtn import rtn
from tokenmill.model import build_model, load_preset, tiny
from tokenmill.model.quant.grid import Scheme, dequantize_matrix


def correlated_inputs(seed: int, n: int = 1024, d: int = 256) -> torch.Tensor:
    """Inputs whose channels are mixed by a matrix with singular values from 1 to 0.01, a few of them large."""
    g = torch.Generator().manual_seed(seed)
    u, _, v = torch.linalg.svd(torch.randn(d, d, generator=g))
    x = torch.randn(n, d, generator=g) @ (u @ torch.diag(torch.logspace(0, -2, d)) @ v) * 3
    x[:, :4] *= 20
    return x


def output_error(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    return float(((x @ q.T - x @ w.T) ** 2).mean())


def hessian_of(x: torch.Tensor, batch: int = 300) -> torch.Tensor:
    h = Hessian(x.shape[1], "cpu")
    for chunk in x.split(batch):
        h.add_batch(chunk)
    return h.H


def test_hessian_accumulates_2xxt_over_n():
    x = correlated_inputs(0, n=1000)
    torch.testing.assert_close(hessian_of(x, batch=300), 2 * x.T @ x / len(x), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scheme", [Scheme(4, 128, True), Scheme(4, 128, False), Scheme(4, None, True), Scheme(8, None, True)], ids=str)
@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
def test_gptq_beats_rtn_on_correlated_inputs(scheme, act_order):
    x = correlated_inputs(1)
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2)) * 0.05
    result = gptq_quantize(w, hessian_of(x), scheme, act_order=act_order)
    gptq = output_error(x, w, dequantize_matrix(result.codes, result.scales, result.zeros, scheme))
    baseline = output_error(x, w, dequantize_matrix(*rtn(w, scheme), scheme))
    assert gptq < 0.25 * baseline
    assert int(result.codes.max()) <= scheme.max_code and result.damp == 0.01 and result.dead_columns == 0


def test_lazy_batch_updates_do_not_change_the_result():
    """Updating after every column (block 1) or in blocks that cut across groups gives the same codes."""
    x, w = correlated_inputs(3), torch.randn(32, 256, generator=torch.Generator().manual_seed(4)) * 0.05
    H = hessian_of(x)
    for scheme in (Scheme(4, 32, False), Scheme(4, 128, True)):
        reference = gptq_quantize(w, H, scheme, block_size=1)
        for block_size in (7, 128, 256):
            other = gptq_quantize(w, H, scheme, block_size=block_size)
            assert (other.codes == reference.codes).float().mean() > 0.999
            assert other.loss == pytest.approx(reference.loss, rel=1e-4)


def test_no_cholesky_failure_across_20_seeds():
    """Rank-deficient inputs (fewer tokens than channels), dead channels and wildly scaled channels."""
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        d = int(torch.randint(48, 200, (1,), generator=g))
        x = torch.randn(int(torch.randint(8, d, (1,), generator=g)), d, generator=g)
        x *= torch.logspace(-3, 3, d)[torch.randperm(d, generator=g)]
        x[:, torch.randperm(d, generator=g)[:5]] = 0
        w = torch.randn(16, d, generator=g)
        scheme = Scheme(4, 32, bool(seed % 2))
        result = gptq_quantize(w, hessian_of(x, batch=7), scheme, act_order=bool(seed % 3))
        q = dequantize_matrix(result.codes, result.scales, result.zeros, scheme)
        assert torch.isfinite(q).all() and result.dead_columns == 5
        assert output_error(x, w, q) <= output_error(x, w, dequantize_matrix(*rtn(w, scheme), scheme))


def test_damping_is_raised_until_the_factorisation_succeeds():
    x = torch.randn(4, 32, generator=torch.Generator().manual_seed(5))  # rank 4: H is singular
    H = 2 * x.T @ x / 4
    assert torch.linalg.cholesky_ex(H)[1] != 0
    U, damp = inverse_hessian_factor(H, 0.0)
    assert damp > 0 and torch.isfinite(U).all()
    result = gptq_quantize(torch.randn(8, 32), H, Scheme(4, 32), damp=0.0)
    assert result.damp == damp


def test_dead_columns_are_zero():
    x = correlated_inputs(6, d=64)
    x[:, [3, 10]] = 0
    w = torch.randn(16, 64)
    result = gptq_quantize(w, hessian_of(x), Scheme(4, 32, False))
    q = dequantize_matrix(result.codes, result.scales, result.zeros, Scheme(4, 32, False))
    assert result.dead_columns == 2 and torch.equal(q[:, [3, 10]], torch.zeros(16, 2))


@torch.no_grad()
def test_gptq_model_is_closer_to_full_precision_than_rtn():
    torch.manual_seed(0)
    model = build_model(tiny(load_preset("mistral-7b")), "cpu").eval()
    calib = torch.randint(0, model.config.vocab_size, (16, 64))
    reference = model(calib)
    errors = {}
    for method in ("rtn4", "gptq"):
        q = copy.deepcopy(model)
        info = quantize_model(q, method, Scheme(4, 32, True), calib if method == "gptq" else None, batch_size=4)
        errors[method] = float(((q(calib) - reference) ** 2).mean())
    assert errors["gptq"] < 0.7 * errors["rtn4"]
    assert set(info["layers"]) == {f"layers.{i}.{n}" for i in range(2) for n in ("attn.wqkv", "attn.wo", "ffn.w1", "ffn.w2", "ffn.w3")}
