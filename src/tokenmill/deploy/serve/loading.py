"""A model folder made ready to serve: its tokenizer and weights checked against each other, in an engine."""

from __future__ import annotations

from pathlib import Path

import torch

from tokenmill.deploy.serve.engine import AsyncEngine, Engine, EngineConfig
from tokenmill.errors import TokenmillError


def load_engine(model_dir: Path, config: EngineConfig, tokenizer_dir: Path | None = None,
                device: str | None = None, dtype: torch.dtype | None = None) -> AsyncEngine:
    """An engine over the model folder `model_dir` (plain or quantized) and its tokenizer
    (`tokenizer_dir`, default the model folder itself); a user error names the folder and the fix."""
    from tokenmill.model import load_model
    from tokenmill.tokenizer import Tokenizer
    from tokenmill.tokenizer.artifact import HF_FILE

    if not model_dir.is_dir():
        raise TokenmillError(f"model folder not found: {model_dir}")
    tokenizer_dir = tokenizer_dir or model_dir
    if not (tokenizer_dir / HF_FILE).is_file():  # tokenmill's own tokenizer, or a Hub model's
        raise TokenmillError(
            f"{tokenizer_dir} holds no tokenizer ({HF_FILE} missing); "
            "point --tokenizer at the tokenizer folder (stage 03's output)"
        )
    tokenizer = Tokenizer.load(tokenizer_dir)
    model = load_model(model_dir, device=device, dtype=dtype)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise TokenmillError(
            f"the tokenizer in {tokenizer_dir} has {tokenizer.vocab_size} tokens, more than the model's "
            f"vocab_size {model.config.vocab_size}"
        )
    try:
        return AsyncEngine(Engine(model, tokenizer, config))
    except ValueError as e:
        raise TokenmillError(f"cannot start the engine: {e}") from None
