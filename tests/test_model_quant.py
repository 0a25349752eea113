"""Quantized folders belong to the model contract: reading one needs no deployment code."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from tokenmill.deploy.quant.quantize import quantize_model, scheme_for
from tokenmill.deploy.quant.save import save_quantized
from tokenmill.model import build_model, load_preset, tiny

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
