"""What a run reports: MFU against the device's peak, the Chinchilla check, and its figures."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tokenmill.atomic import write_text
from tokenmill.figures import line_chart_svg

# Dense 16-bit tensor-core peaks (FLOP/s) from the vendors' data sheets; the first match of the
# device name wins (so "H100 PCIe" before "H100", "L40S" before "L4").
PEAK_FLOPS_16BIT = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("V100", 125e12),
)

# Hoffmann et al. (2022), Chinchilla: compute-optimal training uses about 20 tokens per parameter.
CHINCHILLA_TOKENS_PER_PARAM = 20


def peak_flops(device: torch.device, dtype: torch.dtype | None) -> float | None:
    """The device's peak for the training precision, when known (None on the CPU and in fp32)."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS_16BIT if key in name), None)


def chinchilla(params: int, tokens: int) -> dict:
    """Tokens per parameter, and the compute-optimal size for this run's compute C ≈ 6ND:
    with D = 20N, C = 120 N², so N_opt = √(C / 120) and D_opt = 20 N_opt."""
    compute = 6 * params * tokens
    n_opt = math.sqrt(compute / (6 * CHINCHILLA_TOKENS_PER_PARAM))
    ratio = tokens / params
    if ratio < CHINCHILLA_TOKENS_PER_PARAM / 2:
        verdict = "under-trained for its size: a smaller model on more tokens would reach a lower loss with this compute"
    elif ratio > CHINCHILLA_TOKENS_PER_PARAM * 2:
        verdict = "past compute-optimal: more tokens than Chinchilla's 20 per parameter (cheaper to serve, as LLaMA chose)"
    else:
        verdict = "about compute-optimal"
    return {
        "params": params,
        "tokens": tokens,
        "tokens_per_param": round(ratio, 3),
        "compute_flops": float(compute),
        "compute_optimal_params": round(n_opt),
        "compute_optimal_tokens": round(CHINCHILLA_TOKENS_PER_PARAM * n_opt),
        "verdict": verdict,
    }


def write_figures(metrics: list[dict], out: Path, baselines: dict[str, float]) -> list[str]:
    """loss.svg (train and validation loss, with reference lines) and lr.svg."""
    train = [(m["step"], m["loss"]) for m in metrics if "loss" in m]
    val = [(m["step"], m["val_loss"]) for m in metrics if "val_loss" in m]
    write_text(out / "loss.svg", line_chart_svg(
        "Loss (nats per token)", [("train", train), ("validation", val)], "step", "cross-entropy",
        hlines=list(baselines.items()),
    ))
    write_text(out / "lr.svg", line_chart_svg(
        "Learning rate", [("lr", [(m["step"], m["lr"]) for m in metrics if "lr" in m])], "step", "lr",
    ))
    return ["loss.svg", "lr.svg"]
