"""Weight-only quantization (stage 08, part I): INT8 and INT4, round-to-nearest, GPTQ and AWQ.

    from tokenmill.deploy.quant import quantize_model, save_quantized, scheme_for
    info = quantize_model(model, "gptq", scheme_for("gptq"), calib_ids)   # linears -> QuantLinear, in place
    save_quantized(model, "out/int4", info)
    model = tokenmill.model.load_model("out/int4")   # the format, QuantLinear included, is tokenmill.model.quant's

See docs/quantization.md. The names below load torch only when first used.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "quantize_model": "tokenmill.deploy.quant.quantize",
    "scheme_for": "tokenmill.deploy.quant.quantize",
    "METHODS": "tokenmill.deploy.quant.quantize",
    "save_quantized": "tokenmill.deploy.quant.save",
    "calibration_ids": "tokenmill.deploy.quant.calib",
    "quantize_stage": "tokenmill.deploy.quant.stage",
}

__all__ = ["QuantizeConfig", *_LAZY]

from tokenmill.deploy.quant.config import QuantizeConfig  # noqa: E402


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokenmill.deploy.quant' has no attribute '{name}'")
