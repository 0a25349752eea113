"""What quantization costs and gains: size on disk, validation perplexity, decoding speed.

`compare` quantizes one model every way (INT8, INT4 by RTN, GPTQ and AWQ), keeps BF16 and FP32
as references, and measures each on the same validation windows and the same decoding run:

- size: bytes of model.safetensors, and of the quantized layers alone against the same layers
  in FP32 (the embedding, kept in full precision, dominates a small model's file);
- perplexity: exp of the mean next-token loss over the validation split's windows;
- decode tokens/s: greedy decoding with a KV cache after a short prompt, at batch 1 and 16,
  tokens generated over wall time of the decoding steps (the prefill excluded), best of three.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from tokenmill.deploy.quant.quantize import CALIBRATED, quantize_model, scheme_for
from tokenmill.deploy.quant.save import save_quantized
from tokenmill.figures import bar_chart, human_bytes
from tokenmill.model.generate import generate
from tokenmill.model.io import WEIGHTS, copy_tokenizer, load_model, save_model
from tokenmill.model.quant.linear import QuantLinear

# Row name -> quantization method (None: the unquantized model in that dtype).
VARIANTS = {"fp32": None, "bf16": None, "int8": "int8", "int4-rtn": "rtn4", "int4-gptq": "gptq", "int4-awq": "awq"}


@torch.no_grad()
def perplexity(model: nn.Module, data, batch_size: int = 16, max_batches: int | None = None) -> float:
    """exp(mean cross-entropy) over the windows of a TokenDataset (validation split)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for b, (x, y) in enumerate(data.sequential(batch_size, device=device)):
        if max_batches is not None and b >= max_batches:
            break
        logits = model(x).float()
        total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
        count += y.numel()
    return math.exp(total / count)


@torch.no_grad()
def decode_speed(model: nn.Module, batch_size: int, n_tokens: int, prompt_len: int = 16, repeats: int = 3) -> float:
    """Tokens per second of greedy decoding (`generate`, KV-cached), `batch_size` sequences at once.
    The time of `n_tokens` decoding steps is that of generating n_tokens + 1 tokens less that of
    generating one (the prefill and its token), each the best of `repeats` runs, since a busy
    machine only ever slows a run down."""
    config = model.config
    device = next(model.parameters()).device
    prompt_len = min(prompt_len, config.context_length - n_tokens - 1)
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, config.vocab_size, (batch_size, prompt_len), generator=generator).tolist()

    def seconds(new_tokens: int) -> float:
        _sync(device)
        start = time.perf_counter()
        generate(model, prompts, new_tokens, temperature=0)
        _sync(device)
        return time.perf_counter() - start

    # One run untimed, so that lazily built kernel layouts and allocator warm-up are not counted.
    seconds(2)
    prefill = min(seconds(1) for _ in range(repeats))
    whole = min(seconds(n_tokens + 1) for _ in range(repeats))
    return batch_size * n_tokens / max(whole - prefill, 1e-9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_bytes(model: nn.Module) -> tuple[int, int]:
    """Bytes of the quantizable layers' weights as stored (codes, scales, zeros) and in FP32."""
    stored = fp32 = 0
    for module in model.layers.modules():
        if isinstance(module, QuantLinear):
            stored += sum(t.numel() * t.element_size() for n, t in module.named_buffers())
            fp32 += 4 * module.in_features * module.out_features
        elif isinstance(module, nn.Linear):
            stored += module.weight.numel() * module.weight.element_size()
            fp32 += 4 * module.weight.numel()
    return stored, fp32


def folder_bytes(folder: str | Path) -> int:
    """Size of the weights file of a model folder."""
    return (Path(folder) / WEIGHTS).stat().st_size


def measure(model: nn.Module, folder: Path, val, batch_sizes: tuple[int, ...], decode_tokens: int, eval_batch_size: int,
            eval_batches: int | None) -> dict:
    stored, fp32 = layer_bytes(model)
    row = {
        "file_bytes": folder_bytes(folder),
        "layer_bytes": stored,
        "layer_compression": fp32 / stored,
        "perplexity": perplexity(model, val, eval_batch_size, eval_batches),
    }
    for b in batch_sizes:
        row[f"decode_tok_s_batch{b}"] = decode_speed(model, b, decode_tokens)
    return row


def compare(
    model_dir: str | Path, val, calib_ids: torch.Tensor | None, settings: dict, *, variants: tuple[str, ...] = tuple(VARIANTS),
    done: dict[str, Path] | None = None, device: torch.device | str | None = None, batch_sizes: tuple[int, ...] = (1, 16),
    decode_tokens: int = 32, eval_batch_size: int = 16, eval_batches: int | None = None, log: Callable[[str], None] = print,
) -> dict:
    """One row per variant (see VARIANTS) and each one's perplexity change against FP32. `settings`
    are quantize_model's keyword arguments plus group_size and symmetric; `done` maps variants
    already written (e.g. the stage's own output) to their folders, which are measured, not redone."""
    done = dict(done or {})
    rows: dict[str, dict] = {}
    scratch = Path(tempfile.mkdtemp(prefix="tokenmill-quant-"))
    settings = dict(settings)
    group_size, symmetric = settings.pop("group_size", 128), settings.pop("symmetric", True)
    try:
        for name in variants:
            method = VARIANTS[name]
            folder = done.get(name)
            if folder is None:
                folder = scratch / name
                base = load_model(model_dir, device=device, dtype=torch.bfloat16 if name == "bf16" else torch.float32)
                if method is None:
                    save_model(base, folder)
                else:
                    info = quantize_model(base, method, scheme_for(method, group_size, symmetric),
                                          calib_ids if method in CALIBRATED else None, **settings)
                    save_quantized(base, folder, info)
                copy_tokenizer(model_dir, folder)
                del base
            model = load_model(folder, device=device)
            rows[name] = measure(model, folder, val, batch_sizes, decode_tokens, eval_batch_size, eval_batches)
            log(format_row(name, rows[name]))
            del model
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if "fp32" in rows:
        for row in rows.values():
            row["perplexity_change"] = row["perplexity"] / rows["fp32"]["perplexity"] - 1
    return rows


def format_row(name: str, row: dict) -> str:
    speeds = "  ".join(f"{k.removeprefix('decode_tok_s_')} {v:,.0f} tok/s" for k, v in row.items() if k.startswith("decode_"))
    return (f"{name:10s} {human_bytes(row['file_bytes']):>9s}  layers {row['layer_compression']:4.2f}x smaller  "
            f"ppl {row['perplexity']:.3f}  {speeds}")


def report_charts(rows: dict) -> dict[str, str]:
    """SVG bar charts of the comparison: perplexity, file size, decoding speed at each batch size."""
    charts = {
        "eval_perplexity.svg": bar_chart("Validation perplexity", [(n, r["perplexity"], f"{r['perplexity']:.3f}")
                                                                   for n, r in rows.items()], "perplexity (lower is better)"),
        "eval_size.svg": bar_chart("Size of model.safetensors", [(n, r["file_bytes"], human_bytes(r["file_bytes"]))
                                                                 for n, r in rows.items()], "bytes", human_bytes),
    }
    for key in next(iter(rows.values())):
        if key.startswith("decode_tok_s_"):
            batch = key.removeprefix("decode_tok_s_")
            charts[f"eval_decode_{batch}.svg"] = bar_chart(
                f"Decoding speed, {batch}", [(n, r[key], f"{r[key]:,.0f}") for n, r in rows.items()], "tokens per second")
    return charts
