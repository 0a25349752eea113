"""The model folder: `model.json` + `model.safetensors` (+ tokenizer files), self-contained.

Weights are read with safetensors only, never unpickled. A tied output head is stored once,
as the token embedding. Weights that are not finite (NaN, ±inf) are never written.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tokenmill.atomic import naming_full_disk, publish, tmp_sibling, write_text
from tokenmill.device import pick_device
from tokenmill.errors import TokenmillError
from tokenmill.model.config import ModelConfig, config_json, read_config
from tokenmill.model.transformer import Transformer

WEIGHTS = "model.safetensors"
# Files of a tokenizer that travel with a model (Hugging Face names).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenmill_tokenizer.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "added_tokens.json",
    "generation_config.json",  # the ids that end an answer (eos_token_id)
)
TIED = "output.weight"


def build_model(config: ModelConfig, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Transformer:
    """A freshly initialised model on `device` (CUDA when present)."""
    with pick_device(device):
        model = Transformer(config)
    return model.to(dtype) if dtype is not None else model


def state_dict_for_saving(model: Transformer) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop(TIED, None)  # the embedding itself (a quantized head has codes of its own instead)
    return state


def save_model(model: Transformer, folder: str | Path) -> Path:
    """Write model.safetensors and model.json into `folder` (each file atomically; nothing at all
    when a weight is not finite)."""
    folder = Path(folder)
    write_weights(state_dict_for_saving(model), folder / WEIGHTS)
    write_text(folder / "model.json", config_json(model.config))
    return folder


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor of `state` holding a NaN or an infinity."""
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite(state: dict[str, torch.Tensor], where: str | Path) -> None:
    """Refuse to save weights a diverged run left NaN or infinite: they would load, and answer garbage."""
    name = first_non_finite(state)
    if name is not None:
        raise TokenmillError(f"not writing {where}: {name} holds NaN or infinite values (the training diverged)")


def write_weights(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """save_file, atomically: a killed write never leaves a torn file under the final name, and
    weights that are not finite are refused before anything is written."""
    check_finite(state, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        with naming_full_disk(path):
            save_file({k: v.cpu() for k, v in state.items()}, str(tmp), metadata=metadata or {"format": "pt"})
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_state(model: Transformer, state: dict[str, torch.Tensor], where: str) -> Transformer:
    """Put `state` into a model built on the meta device (no memory spent on a throwaway init)."""
    expected = set(model.state_dict()) - ({TIED} if model.config.tie_embeddings else set())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise TokenmillError(
            f"{where} does not match its model.json: missing {missing[:5] or 'nothing'}, unexpected {unexpected[:5] or 'nothing'}"
        )
    for name, param in model.state_dict().items():
        if name in state and tuple(state[name].shape) != tuple(param.shape):
            raise TokenmillError(f"{where}: {name} has shape {tuple(state[name].shape)}, model.json implies {tuple(param.shape)}")
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.init_buffers(next(iter(state.values())).device)
    return model


def load_model(
    folder: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Transformer:
    """The model of a folder, in eval mode, on `device` (CUDA when present), in its stored dtype
    unless `dtype` is given. `model(input_ids)` returns logits (batch, seq, vocab)."""
    folder = Path(folder)
    if (folder / "quantization.json").is_file():  # a quantized model (stage 08)
        from tokenmill.model.quant.io import load_quantized
        return load_quantized(folder, device, dtype)
    config = read_config(folder)
    path, state = read_weights(folder, device)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    with torch.device("meta"):
        model = Transformer(config)
    return load_state(model, state, path).eval()


def read_weights(folder: Path, device: torch.device | str | None = None) -> tuple[str, dict[str, torch.Tensor]]:
    """The path and the tensors of a model folder's weights file, on `device` (CUDA when present)."""
    path = folder / WEIGHTS
    if not path.is_file():
        raise TokenmillError(f"no weights in {folder}: {WEIGHTS} is missing")
    device = pick_device(device)
    return str(path), load_file(str(path), device=str(device))


def copy_tokenizer(src: str | Path, dst: str | Path) -> list[str]:
    """Copy the tokenizer files found in `src` to `dst`; return their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copyfile(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied
