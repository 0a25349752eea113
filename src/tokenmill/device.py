"""Where a model runs and at what precision: one policy for training, alignment, serving and the explorer.

A device is named `auto` (CUDA when present, else the CPU), `cpu`, `cuda` or `cuda:N`; a
precision `auto`, `fp32`, `bf16` or `fp16` names the autocast dtype, auto being bf16 on a GPU
that has it, fp16 on one that has not, and fp32 (no autocast) on the CPU.

Configs and the command line name devices, precisions and dtypes before torch is loaded
(`tokenmill --help` stays quick), so this module imports torch only inside its functions.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Literal

from tokenmill.errors import TokenmillError

if TYPE_CHECKING:
    import torch

DeviceChoice = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
DTYPE_NAMES = ("float32", "bfloat16", "float16")
# The dtype each precision computes in under autocast (fp32: none, autocast is off).
PRECISION_DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def dtype_named(name: str) -> torch.dtype:
    """The torch dtype of one of DTYPE_NAMES."""
    import torch

    if name not in DTYPE_NAMES:
        raise TokenmillError(f"dtype {name!r} is not one of {', '.join(DTYPE_NAMES)}")
    return getattr(torch, name)


def pick_device(choice: str | torch.device | None = None, local_rank: int = 0) -> torch.device:
    """The device `choice` names. auto (or None): CUDA when present, else the CPU; cuda: GPU
    `local_rank` (the process's own under torchrun); cpu, cuda:N or a torch.device: itself.
    Refuses a CUDA device this machine does not have."""
    import torch

    if choice is None or choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError) as e:
        raise TokenmillError(f"device {str(choice)!r} is not a device (auto, cpu, cuda or cuda:N): {e}") from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise TokenmillError(f"device is {str(choice)!r} but no CUDA device is available")
    index = local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise TokenmillError(f"device is {str(choice)!r} but there is no CUDA device {index} "
                             f"({torch.cuda.device_count()} available)")
    return torch.device("cuda", index)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype autocast computes in for `precision` on `device`; None: float32, autocast off."""
    import torch

    if precision == "auto":
        precision = "fp32" if device.type != "cuda" else ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision not in PRECISION_DTYPES:
        raise TokenmillError(f"precision {precision!r} is not one of auto, {', '.join(PRECISION_DTYPES)}")
    name = PRECISION_DTYPES[precision]
    return getattr(torch, name) if name else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """The autocast context for `dtype` on `device` (see autocast_dtype); a no-op for None."""
    import torch

    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
