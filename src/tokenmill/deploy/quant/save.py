"""Write a quantized model folder in the format tokenmill.model reads (model/quant/io.py describes it)."""

from __future__ import annotations

from pathlib import Path

from tokenmill.atomic import write_json, write_text
from tokenmill.model.config import config_json
from tokenmill.model.io import WEIGHTS, state_dict_for_saving, write_weights
from tokenmill.model.quant.io import FORMAT, LAYOUT, QUANTIZATION, VERSION
from tokenmill.model.quant.linear import QuantLinear
from tokenmill.model.transformer import Transformer


def save_quantized(model: Transformer, folder: str | Path, info: dict) -> Path:
    """Write model.json, model.safetensors and quantization.json (`info` from quantize_model, plus
    anything the caller adds, e.g. the calibration set)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modules = sorted(name for name, m in model.named_modules() if isinstance(m, QuantLinear))
    write_weights(state_dict_for_saving(model), folder / WEIGHTS)
    write_text(folder / "model.json", config_json(model.config))
    write_json(folder / QUANTIZATION, {"format": FORMAT, "version": VERSION, **info, "layout": LAYOUT, "modules": modules})
    return folder
