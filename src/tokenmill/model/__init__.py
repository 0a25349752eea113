"""Stages 04 and 07: the transformer, its model folder, generation, Hugging Face interop, anatomy and planning.

    from tokenmill.model import load_model, save_model
    model = load_model("runs/x/05_pretrain/model")   # model(input_ids) -> logits (batch, seq, vocab)

The names below load torch only when first used, so that reading a run config stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "Transformer": "tokenmill.model.transformer",
    "KVCache": "tokenmill.model.kv_cache",
    "build_model": "tokenmill.model.io",
    "load_model": "tokenmill.model.io",
    "save_model": "tokenmill.model.io",
}

__all__ = ["ModelConfig", "ModelSection", "load_preset", "tiny", *_LAZY]

from tokenmill.model.config import ModelConfig  # noqa: E402
from tokenmill.model.presets import load_preset, tiny  # noqa: E402
from tokenmill.model.section import ModelSection  # noqa: E402


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokenmill.model' has no attribute '{name}'")
