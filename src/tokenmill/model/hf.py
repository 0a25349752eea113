"""Hugging Face interop: a `transformers` checkpoint folder ↔ a tokenmill model folder.

Import reads `config.json` and safetensors (never pickles), maps the family's config to a
`ModelConfig` and renames (and, for fused Q/K/V, reorders) every tensor. Export does the
reverse, into a folder `AutoModelForCausalLM.from_pretrained` loads, with the tokenizer files
(chat template included) `AutoTokenizer` loads and a generation config that stops at the end of
a chat turn. A model is exported only
to a family that expresses it exactly: the family's config is read back and must give the same
architecture, so a switch the family lacks is reported by name rather than silently dropped.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tokenmill.atomic import atomic_dir, write_json, write_text
from tokenmill.errors import TokenmillError
from tokenmill.model.config import ModelConfig, config_json, make_config, read_config
from tokenmill.model.hf_families import FAMILIES, Family
from tokenmill.model.io import TIED, WEIGHTS, copy_tokenizer, write_weights
from tokenmill.model.transformer import Transformer
from tokenmill.tokenizer.artifact import HF_FILE
from tokenmill.tokenizer.tokenizer import Tokenizer

# Fields that describe training, not the function a checkpoint computes.
TRAINING_FIELDS = ("dropout", "init_std")
# Hugging Face's own settings of a model that travel with it both ways, as they are (eos ids, sampling defaults).
GENERATION_CONFIG = "generation_config.json"


def copy_hf_files(src: Path, dst: Path) -> None:
    copy_tokenizer(src, dst)
    if (src / GENERATION_CONFIG).is_file():
        shutil.copyfile(src / GENERATION_CONFIG, dst / GENERATION_CONFIG)


def generation_config(folder: Path) -> dict[str, Any] | None:
    """The generation_config.json a folder without one implies: its tokenizer's BOS, every id that
    ends an answer (end of document and end of chat turn), its padding; None without a tokenizer.
    Without it `generate` in transformers would run past the end of a chat turn."""
    if not (folder / HF_FILE).is_file():
        return None
    tokenizer = Tokenizer.load(folder)
    stops = sorted(tokenizer.stop_ids - {tokenizer.eos_id})
    if tokenizer.eos_id is not None:
        stops.insert(0, tokenizer.eos_id)  # the first is the one transformers pads finished rows with
    return {"bos_token_id": tokenizer.bos_id, "eos_token_id": stops, "pad_token_id": tokenizer.pad_id}


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise TokenmillError(
            f"no safetensors weights in {folder} (model.safetensors or an index of shards); "
            "pickled .bin checkpoints are not read: save the model with safe_serialization"
        )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(folder / name)))
    return state


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Transformer(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        del shapes[TIED]
    return shapes


def _module_pairs(config: ModelConfig, family: Family) -> Iterator[tuple[str, str]]:
    for ours, theirs in family.modules(config).items():
        if "{i}" in ours:
            for i in range(config.n_layers):
                yield ours.format(i=i), theirs.format(i=i)
        else:
            yield ours, theirs


def _qkv_from_hf(t: torch.Tensor, layout: str, c: ModelConfig) -> torch.Tensor:
    """Rows of a fused HF QKV (weight or bias) reordered into tokenmill's [Q; K; V]."""
    rest, hd = t.shape[1:], c.head_dim
    if layout == "per_head":
        return t.reshape(c.n_heads, 3, hd, *rest).transpose(0, 1).reshape(-1, *rest)
    if layout == "grouped":
        groups = c.n_heads // c.n_kv_heads
        t = t.reshape(c.n_kv_heads, groups + 2, hd, *rest)
        q, k, v = t[:, :groups], t[:, groups], t[:, groups + 1]
        return torch.cat([x.reshape(-1, *rest) for x in (q, k, v)])
    return t


def _qkv_to_hf(t: torch.Tensor, layout: str, c: ModelConfig) -> torch.Tensor:
    rest, hd = t.shape[1:], c.head_dim
    if layout == "per_head":
        return t.reshape(3, c.n_heads, hd, *rest).transpose(0, 1).reshape(-1, *rest)
    if layout == "grouped":
        groups = c.n_heads // c.n_kv_heads
        q, k, v = t.split([c.n_heads * hd, c.n_kv_heads * hd, c.n_kv_heads * hd])
        q = q.reshape(c.n_kv_heads, groups, hd, *rest)
        k, v = k.reshape(c.n_kv_heads, 1, hd, *rest), v.reshape(c.n_kv_heads, 1, hd, *rest)
        return torch.cat((q, k, v), dim=1).reshape(-1, *rest)
    return t


def weights_from_hf(hf: dict[str, torch.Tensor], config: ModelConfig, family: Family, where: str) -> dict[str, torch.Tensor]:
    hf = dict(hf)
    expected = expected_shapes(config)
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in hf:
            raise TokenmillError(f"{where}: tensor '{key}' is missing for a {family.model_type} model of this config")
        return hf.pop(key)

    for ours, theirs in _module_pairs(config, family):
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in expected:
                t = take(f"{theirs}.{kind}")
                out[f"{ours}.{kind}"] = t.t() if family.transposed and t.dim() == 2 and ours.startswith("layers.") else t
    layout, name = family.qkv(config)
    for i in range(config.n_layers):
        for kind in ("weight", "bias"):
            if f"layers.{i}.attn.wqkv.{kind}" not in expected:
                continue
            if layout == "separate":
                t = torch.cat([take(f"{name.format(x, i=i)}.{kind}") for x in "qkv"])
            else:
                t = take(f"{name.format(i=i)}.{kind}")
                t = _qkv_from_hf(t.t() if family.transposed and t.dim() == 2 else t, layout, config)
            out[f"layers.{i}.attn.wqkv.{kind}"] = t
    gate_up = family.gate_up(config)
    for i in range(config.n_layers if gate_up else 0):
        for kind in ("weight", "bias"):
            if f"layers.{i}.ffn.w1.{kind}" in expected:
                out[f"layers.{i}.ffn.w1.{kind}"], out[f"layers.{i}.ffn.w3.{kind}"] = take(f"{gate_up.format(i=i)}.{kind}").chunk(2)
    if config.tie_embeddings:
        hf.pop(f"{family.modules(config)['output']}.weight", None)  # a tied head some checkpoints store anyway
    leftover = sorted(k for k in hf if not k.endswith(family.ignored_suffixes))
    if leftover:
        raise TokenmillError(f"{where}: tensors this {family.model_type} config does not explain: {leftover[:6]}")
    for key, t in out.items():
        if tuple(t.shape) != expected[key]:
            raise TokenmillError(f"{where}: {key} has shape {tuple(t.shape)}, the config implies {expected[key]}")
    return {k: v.contiguous() for k, v in out.items()}


def weights_to_hf(state: dict[str, torch.Tensor], config: ModelConfig, family: Family) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    used = set()
    for ours, theirs in _module_pairs(config, family):
        for kind in ("weight", "bias"):
            if f"{ours}.{kind}" in state:
                t = state[f"{ours}.{kind}"]
                out[f"{theirs}.{kind}"] = t.t() if family.transposed and t.dim() == 2 and ours.startswith("layers.") else t
                used.add(f"{ours}.{kind}")
    layout, name = family.qkv(config)
    for i in range(config.n_layers):
        for kind in ("weight", "bias"):
            key = f"layers.{i}.attn.wqkv.{kind}"
            if key not in state:
                continue
            used.add(key)
            t = state[key]
            if layout == "separate":
                sizes = [config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim, config.n_kv_heads * config.head_dim]
                for x, part in zip("qkv", t.split(sizes)):
                    out[f"{name.format(x, i=i)}.{kind}"] = part
            else:
                t = _qkv_to_hf(t, layout, config)
                out[f"{name.format(i=i)}.{kind}"] = t.t() if family.transposed and t.dim() == 2 else t
    gate_up = family.gate_up(config)
    for i in range(config.n_layers if gate_up else 0):
        for kind in ("weight", "bias"):
            w1, w3 = f"layers.{i}.ffn.w1.{kind}", f"layers.{i}.ffn.w3.{kind}"
            if w1 in state:
                out[f"{gate_up.format(i=i)}.{kind}"] = torch.cat((state[w1], state[w3]))
                used.update((w1, w3))
    unused = sorted(set(state) - used)
    if unused:
        raise TokenmillError(f"the {family.model_type} layout has no place for {unused[:6]}")
    return {k: v.contiguous() for k, v in out.items()}


def family_for(config: ModelConfig, name: str | None = None) -> Family:
    """The first family (or the named one) whose config reproduces `config`'s architecture exactly."""
    if name is not None and name not in FAMILIES:
        raise TokenmillError(f"unknown family '{name}'; the families are: {', '.join(FAMILIES)}")
    reasons = []
    for family in [FAMILIES[name]] if name else FAMILIES.values():
        try:
            back = make_config(family.from_hf(family.to_hf(config)))
        except TokenmillError as e:
            reasons.append(f"{family.model_type}: {e}")
            continue
        diff = [
            f"{k} ({getattr(config, k)!r}; {family.model_type} gives {getattr(back, k)!r})"
            for k in ModelConfig.model_fields
            if k not in TRAINING_FIELDS and getattr(config, k) != getattr(back, k)
        ]
        if not diff:
            return family
        reasons.append(f"{family.model_type}: cannot express " + ", ".join(diff))
    raise TokenmillError("no transformers family expresses this model exactly:\n  " + "\n  ".join(reasons))


def special_token_ids(folder: Path) -> dict[str, int | None]:
    """bos/eos/pad ids from the folder's tokenizer files (None where unknown), so that the family's
    defaults (e.g. LLaMA's bos 1, eos 2) never pose as this tokenizer's."""
    ids: dict[str, int | None] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    settings, vocab = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not (settings.is_file() and vocab.is_file()):
        return ids
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(vocab))
    tokens = json.loads(settings.read_text(encoding="utf-8"))
    for kind in ("bos", "eos", "pad"):
        token = tokens.get(f"{kind}_token")
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str):
            ids[f"{kind}_token_id"] = tokenizer.token_to_id(token)
    return ids


def import_hf(src: str | Path, dst: str | Path) -> ModelConfig:
    """A transformers checkpoint folder → a tokenmill model folder (tokenizer files and generation config copied)."""
    src = Path(src)
    path = src / "config.json"
    if not path.is_file():
        raise TokenmillError(f"{src} is not a transformers checkpoint folder: config.json is missing")
    h = json.loads(path.read_text(encoding="utf-8"))
    family = FAMILIES.get(h.get("model_type"))
    if family is None:
        raise TokenmillError(f"{path}: model_type '{h.get('model_type')}' is not supported; supported: {', '.join(FAMILIES)}")
    config = make_config(family.from_hf(h), str(path))
    state = weights_from_hf(read_hf_weights(src), config, family, str(src))
    with atomic_dir(dst) as tmp:
        write_weights(state, tmp / WEIGHTS)
        write_text(tmp / "model.json", config_json(config))
        copy_hf_files(src, tmp)
    return config


def export_hf(src: str | Path, dst: str | Path, family_name: str | None = None) -> Family:
    """A tokenmill model folder → a transformers checkpoint folder of the matching family."""
    src = Path(src)
    config = read_config(src)
    family = family_for(config, family_name)
    if not (src / WEIGHTS).is_file():
        raise TokenmillError(f"no weights in {src}: {WEIGHTS} is missing")
    state = load_file(str(src / WEIGHTS))
    dtype = next(t.dtype for t in state.values() if t.is_floating_point())
    write_hf_checkpoint(src, dst, config, family, weights_to_hf(state, config, family), dtype)
    return family


def write_hf_checkpoint(
    src: Path, dst: str | Path, config: ModelConfig, family: Family, tensors: dict[str, torch.Tensor], dtype: torch.dtype,
    extra_config: dict[str, Any] | None = None,
) -> None:
    """A transformers checkpoint folder `dst`: `tensors` (already in the family's names), config.json
    (with `extra_config`, e.g. a quantization_config), and the tokenizer and generation settings of
    the model folder `src`."""
    hf_config = {**family.to_hf(config), **special_token_ids(src), "dtype": str(dtype).removeprefix("torch."), **(extra_config or {})}
    with atomic_dir(dst) as tmp:
        write_weights(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        write_json(tmp / "config.json", hf_config)
        copy_hf_files(src, tmp)
        implied = None if (src / GENERATION_CONFIG).is_file() else generation_config(src)
        if implied is not None:
            write_json(tmp / GENERATION_CONFIG, implied)
