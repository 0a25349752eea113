"""What a run reports: MFU against the device's peak, the Chinchilla check, and its figures."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from tokenmill.atomic import write_text
from tokenmill.figures import line_chart

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

FIGURES = ["loss.svg", "lr.svg", "grad_norm.svg"]

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


def _points(metrics: list[dict], key: str) -> list[tuple[float, float]]:
    return [(m["step"], m[key]) for m in metrics if isinstance(m.get(key), (int, float)) and "step" in m]


def loss_chart(metrics: list[dict], baselines: dict[str, float]) -> str:
    """Train and validation loss against the step, with reference lines (name -> loss)."""
    return line_chart("Loss", [("train", _points(metrics, "loss")), ("validation", _points(metrics, "val_loss"))],
                      "step", "cross-entropy (nats per token)", hlines=list(baselines.items()))


def lr_chart(metrics: list[dict]) -> str:
    return line_chart("Learning rate", [("learning rate", _points(metrics, "lr"))], "step", "learning rate")


def grad_norm_chart(metrics: list[dict]) -> str:
    return line_chart("Gradient norm (before clipping)", [("gradient norm", _points(metrics, "grad_norm"))], "step",
                      "global L2 norm of the gradients", log_y=True)


def write_figures(metrics: list[dict], out: Path, baselines: dict[str, float]) -> list[str]:
    """loss.svg (train and validation loss, with reference lines), lr.svg and grad_norm.svg."""
    write_text(out / "loss.svg", loss_chart(metrics, baselines))
    write_text(out / "lr.svg", lr_chart(metrics))
    write_text(out / "grad_norm.svg", grad_norm_chart(metrics))
    return FIGURES
