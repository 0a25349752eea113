"""Named architectures: `NAME.json` at their real sizes, and `tiny-NAME` copies.

The presets are package data (`tokenmill/configs/model/`), read through importlib.resources so
that an installed wheel finds them wherever it is run from.

A real-size preset is for counting and planning (its parameters are never allocated for that);
`tiny-NAME` keeps every switch of NAME (position encoding, norm, MLP, attention kind, tying,
...) at a size that runs a forward pass in milliseconds, for tests and for trying things out.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

from tokenmill.errors import ConfigError
from tokenmill.model.config import ModelConfig, make_config, read_config

PRESETS = files("tokenmill") / "configs" / "model"
TINY = "tiny-"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in PRESETS.iterdir() if p.name.endswith(".json"))


def preset_fields(name: str) -> dict[str, Any]:
    """The model.json fields of a preset (`tiny-NAME` included), or of a model.json path or folder."""
    if name.endswith(".json") or "/" in name:
        return read_config(name).model_dump()
    base = name.removeprefix(TINY)
    preset = PRESETS / f"{base}.json"
    if not preset.is_file():
        raise ConfigError(f"unknown model preset '{name}'; the presets are: {', '.join(preset_names())} (each also as tiny-NAME)")
    fields = json.loads(preset.read_text(encoding="utf-8"))
    if name.startswith(TINY):
        fields = tiny(make_config(fields, str(preset))).model_dump()
    return fields


def load_preset(name: str) -> ModelConfig:
    return make_config(preset_fields(name), f"preset {name}")


def tiny(config: ModelConfig, d_model: int = 64, n_layers: int = 2, n_heads: int = 4, vocab_size: int = 256) -> ModelConfig:
    """A few-thousand-parameter copy of `config` with every architectural switch unchanged."""
    if config.n_kv_heads == config.n_heads:
        n_kv_heads = n_heads
    else:
        n_kv_heads = 1 if config.n_kv_heads == 1 else n_heads // 2
    context = 64
    fields = config.model_dump()
    fields.update(
        vocab_size=vocab_size,
        context_length=context,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        head_dim=d_model // n_heads,
        # Keep the MLP's width ratio, rounded to a multiple of 8.
        d_ff=max(8, round(config.d_ff / config.d_model * d_model / 8) * 8),
    )
    if config.sliding_window is not None:
        fields["sliding_window"] = min(config.sliding_window, context // 4)
    if config.rope_original_context is not None:
        fields["rope_original_context"] = max(1, int(context / config.rope_factor))
    return ModelConfig.model_validate(fields)
