"""The grid, packing and QuantLinear: exact round trips, PyTorch's fake quantization as the peer."""

from __future__ import annotations

import pytest
import torch

from tokenmill.deploy.quant.rtn import fake_quantize, grid_params, rtn
from tokenmill.model.quant.grid import Scheme, dequantize_matrix
from tokenmill.model.quant.linear import QuantLinear
from tokenmill.model.quant.pack import pack_int4, unpack_int4

SCHEMES = [
    Scheme(8, None, True), Scheme(8, None, False), Scheme(8, 32, True),
    Scheme(4, 32, True), Scheme(4, 32, False), Scheme(4, 128, True), Scheme(4, 48, False),
]


@pytest.mark.parametrize("shape", [(5, 7), (3, 8), (1, 1), (16, 129)])
def test_pack_unpack_round_trips_exactly(shape):
    codes = torch.randint(0, 16, shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (shape[0], (shape[1] + 1) // 2)
    assert torch.equal(unpack_int4(packed, shape[1]), codes)
    # The layout itself: even column in the low nibble.
    assert int(packed[0, 0]) & 0x0F == int(codes[0, 0])


def test_pack_refuses_codes_that_do_not_fit():
    with pytest.raises(ValueError, match="at most 15"):
        pack_int4(torch.tensor([[3, 16]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="cannot hold"):
        unpack_int4(torch.zeros(2, 3, dtype=torch.uint8), 7)


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_rtn_matches_pytorch_fake_quantization(scheme):
    """Given our scales and zeros, torch.fake_quantize_per_channel_affine rounds to the same grid."""
    w = torch.randn(24, 96, generator=torch.Generator().manual_seed(1)) * 0.05
    w[3, :5] = 0.4  # an outlier group
    w[7] = 0.0  # a dead row
    scales, zeros = grid_params(w, scheme)
    group, n_groups = scheme.group(96), scheme.n_groups(96)
    padded = torch.nn.functional.pad(w, (0, n_groups * group - 96)).view(-1, group)
    peer = torch.fake_quantize_per_channel_affine(
        padded, scales.float().flatten(), zeros.flatten().int(), 0, 0, scheme.max_code
    ).view(24, -1)[:, :96]
    assert torch.equal(fake_quantize(w, scheme), peer)


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_rtn_error_is_at_most_half_a_step(scheme):
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(2)) * 0.1 + (0.0 if scheme.symmetric else 0.05)
    codes, scales, zeros = rtn(w, scheme)
    assert scales.dtype == torch.float16 and zeros.dtype == codes.dtype == torch.uint8
    assert int(codes.max()) <= scheme.max_code
    step = scales.float().repeat_interleave(scheme.group(96), 1)[:, :96]
    assert ((dequantize_matrix(codes, scales, zeros, scheme) - w).abs() <= step / 2 + 1e-7).all()
    if scheme.symmetric:  # the largest weight of each row sits on the grid's edge, unclipped
        assert torch.equal(zeros, torch.full_like(zeros, 2 ** (scheme.bits - 1)))


@pytest.mark.parametrize("scheme", SCHEMES, ids=str)
def test_quant_linear_equals_x_times_dequantized_weight(scheme, monkeypatch):
    """The dequantize path is exact; the CPU kernels (W8A8, INT4 in bfloat16) stay within their rounding."""
    g = torch.Generator().manual_seed(3)
    w, bias = torch.randn(32, 96, generator=g) * 0.05, torch.randn(32, generator=g)
    codes, scales, zeros = rtn(w, scheme)
    layer = QuantLinear.from_codes(codes, scales, zeros, scheme, bias)
    assert torch.equal(layer.codes(), codes) and torch.equal(layer.zeros(), zeros)  # storage round trip
    weight = dequantize_matrix(codes, scales, zeros, scheme)
    fits_int4 = scheme.bits == 4 and 96 % scheme.group(96) == 0 and scheme.group(96) in (32, 64)
    assert layer.kernel() == ("int8_w8a8" if scheme.bits == 8 and scheme.group_size is None else "int4" if fits_int4 else None)
    for x in (torch.randn(1, 1, 96, generator=g), torch.randn(2, 5, 96, generator=g)):  # one row and many
        expected = x @ weight.T + bias
        monkeypatch.setattr(QuantLinear, "use_kernels", False)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
        monkeypatch.setattr(QuantLinear, "use_kernels", True)
        y = layer(x)
        assert y.dtype == x.dtype and y.shape == expected.shape
        if layer.kernel() is None:
            torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
        else:
            assert float((y - expected).norm() / expected.norm()) < 1e-2
    assert (layer._kernel is not None) == (layer.kernel() is not None)


def test_quant_linear_kernels_in_bfloat16():
    g = torch.Generator().manual_seed(4)
    w, x = torch.randn(64, 128, generator=g) * 0.05, torch.randn(3, 128, generator=g)
    for scheme in (Scheme(8, None, True), Scheme(4, 64, False)):
        layer = QuantLinear.from_codes(*rtn(w, scheme), scheme)
        assert layer.kernel() is not None
        expected = x @ layer.dequantize().T
        y = layer(x.bfloat16())
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), expected, rtol=2e-2, atol=2e-2)
