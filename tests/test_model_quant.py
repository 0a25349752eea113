"""Quantized folders belong to the model contract: reading one needs no deployment code; the CPU
kernels (W8A8 through `torch._int_mm`, INT4 through tinygemm's layout) agree with dequantizing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from tokenmill.deploy.quant.quantize import quantize_model, scheme_for
from tokenmill.deploy.quant.rtn import rtn
from tokenmill.deploy.quant.save import save_quantized
from tokenmill.model import build_model, load_model, load_preset, tiny
from tokenmill.model.quant.grid import Scheme
from tokenmill.model.quant.io import replace_linear
from tokenmill.model.quant.linear import QuantLinear

# Run in a fresh interpreter: this test process has imported tokenmill.deploy to write the folder.
LOAD = """
import json, sys
import torch
import tokenmill.model.io
after_import = sorted(m for m in sys.modules if m.startswith("tokenmill.deploy"))
from tokenmill.model import load_model
model = load_model(sys.argv[1], device="cpu")
with torch.no_grad():
    logits = model(torch.tensor([[1, 5, 9, 2]]))
layer = model.layers[0].ffn.w2
print(json.dumps({
    "after_import": after_import,
    "after_load": sorted(m for m in sys.modules if m.startswith("tokenmill.deploy")),
    "layer": f"{type(layer).__module__}.{type(layer).__name__}",
    "finite": bool(torch.isfinite(logits).all()),
}))
"""


def test_loading_a_quantized_folder_imports_nothing_from_deploy(tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny(load_preset("mistral-7b")), "cpu")
    # INT4 with zero points: packed codes, scales and qzeros all go through the model package's reader.
    save_quantized(model, tmp_path, quantize_model(model, "rtn4", scheme_for("rtn4", 32, symmetric=False)))
    out = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["after_import"] == [] and seen["after_load"] == []
    assert seen["layer"] == "tokenmill.model.quant.linear.QuantLinear"
    assert seen["finite"]


@pytest.mark.parametrize("scheme", [Scheme(4, 32, True), Scheme(4, 128, False)], ids=str)
def test_int4_repacking_keeps_the_codes(scheme):
    """Reading the repacked weight back through the kernel itself (identity input, scale 1, offset 8,
    so that (code - 8)·1 + 8 = code) gives exactly the stored codes."""
    w = torch.randn(48, 256, generator=torch.Generator().manual_seed(5)) * 0.05
    layer = QuantLinear.from_codes(*rtn(w, scheme), scheme)
    packed, _ = layer.prepare_kernel()
    n_groups = 256 // layer.group
    identity = torch.stack([torch.ones(n_groups, 48), torch.full((n_groups, 48), 8.0)], -1).bfloat16()
    read_back = torch.ops.aten._weight_int4pack_mm_for_cpu(torch.eye(256, dtype=torch.bfloat16), packed, layer.group, identity)
    assert torch.equal(read_back.t().to(torch.uint8), layer.codes())


@pytest.mark.parametrize("symmetric", [True, False])
def test_w8a8_is_per_token_int8_activations_times_the_int8_weight(symmetric):
    """The int32 product and its zero-point correction are exact: the kernel equals the float product
    of the per-row quantized input with the dequantized weight."""
    g = torch.Generator().manual_seed(6)
    scheme = Scheme(8, None, symmetric)
    layer = QuantLinear.from_codes(*rtn(torch.randn(40, 72, generator=g) * 0.05 + 0.02, scheme), scheme)
    x = torch.randn(5, 72, generator=g) * torch.tensor([[0.01], [1.0], [30.0], [0.5], [2.0]])
    step = x.abs().amax(-1, keepdim=True) / 127
    x_int8 = torch.round(x / step).clamp(-127, 127)
    expected = (x_int8.double() @ layer.dequantize().double().T) * step.double()
    torch.testing.assert_close(layer(x).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,symmetric", [("int8", True), ("int8", False), ("rtn4", True), ("rtn4", False)])
@torch.no_grad()
def test_kernel_logits_match_the_dequantize_reference(method, symmetric, tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = tiny(load_preset("mistral-7b"), d_model=128, n_heads=4, vocab_size=512)
    model = build_model(config, "cpu")
    save_quantized(model, tmp_path, quantize_model(model, method, scheme_for(method, 32, symmetric)))
    loaded = load_model(tmp_path, device="cpu")
    layers = [m for m in loaded.modules() if isinstance(m, QuantLinear)]
    assert layers and all(m.kernel() is not None and m._kernel is not None for m in layers)  # repacked on load
    ids = torch.randint(0, 512, (3, 20), generator=torch.Generator().manual_seed(1))
    fast = loaded(ids)
    monkeypatch.setattr(QuantLinear, "use_kernels", False)
    reference = loaded(ids)
    # W8A8 rounds the activations to 8 bits; INT4 runs in bfloat16.
    assert float((fast - reference).norm() / reference.norm()) < 1e-2


@pytest.mark.parametrize("method", ["int8", "rtn4"])
@torch.no_grad()
def test_a_quantized_head_of_a_tied_embedding_runs_the_kernel_and_keeps_the_embedding(method, tmp_path, monkeypatch):
    torch.manual_seed(0)
    config = tiny(load_preset("mistral-7b"), d_model=128, n_heads=4, vocab_size=512).model_copy(update={"tie_embeddings": True})
    model = build_model(config, "cpu")
    embedding = model.tok_embeddings.weight.detach().clone()
    scheme = scheme_for(method, 32, True)
    info = quantize_model(model, method, scheme)
    head = QuantLinear.from_codes(*rtn(model.output.weight.detach(), scheme), scheme)
    replace_linear(model, "output", head)
    save_quantized(model, tmp_path, info)
    loaded = load_model(tmp_path, device="cpu")
    assert isinstance(loaded.output, QuantLinear) and loaded.output._kernel is not None  # repacked on load
    assert "weight" not in dict(loaded.output.named_parameters())  # not re-tied to the embedding
    torch.testing.assert_close(loaded.tok_embeddings.weight, embedding, rtol=0, atol=0)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    fast = loaded(ids)
    monkeypatch.setattr(QuantLinear, "use_kernels", False)
    reference = loaded(ids)
    h = loaded.hidden_states(ids)[0]
    torch.testing.assert_close(reference, h @ head.dequantize().T, rtol=1e-5, atol=1e-5)
    assert float((fast - reference).norm() / reference.norm()) < 1e-2
