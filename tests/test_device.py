"""One device and precision policy: what `auto` picks, what is refused, what autocast computes in."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tokenmill.device import DTYPE_NAMES, autocast, autocast_dtype, dtype_named, pick_device
from tokenmill.errors import TokenmillError


def test_auto_picks_cuda_when_present_and_cpu_is_the_cpu():
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert pick_device("auto") == pick_device(None) == expected
    assert pick_device("cpu") == pick_device(torch.device("cpu")) == torch.device("cpu")


def test_cuda_is_refused_without_cuda():
    # CUDA hidden from a fresh process, so that the refusal is tested on any machine.
    code = "from tokenmill.device import pick_device\npick_device('cuda')"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "TokenmillError: device is 'cuda' but no CUDA device is available" in done.stderr


def test_a_missing_cuda_device_or_a_wrong_name_is_refused():
    n = torch.cuda.device_count()
    with pytest.raises(TokenmillError, match=f"device is 'cuda:{n}' but"):
        pick_device(f"cuda:{n}")
    with pytest.raises(TokenmillError, match="device 'gpu0' is not a device"):
        pick_device("gpu0")


def test_precisions_name_their_autocast_dtype():
    cpu = torch.device("cpu")
    assert autocast_dtype("auto", cpu) is None  # the CPU trains in float32
    assert autocast_dtype("fp32", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16 and autocast_dtype("fp16", cpu) == torch.float16
    with pytest.raises(TokenmillError, match="precision 'fp8'"):
        autocast_dtype("fp8", cpu)
    a = torch.ones(2, 2)
    with autocast(cpu, None):
        assert (a @ a).dtype == torch.float32
    with autocast(cpu, torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16


def test_dtype_names():
    assert [dtype_named(n) for n in DTYPE_NAMES] == [torch.float32, torch.bfloat16, torch.float16]
    with pytest.raises(TokenmillError, match="dtype 'int8' is not one of"):
        dtype_named("int8")
