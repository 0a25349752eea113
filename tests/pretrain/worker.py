"""Runs pre-training from JSON specs, one after another: `python worker.py SPEC...`, or the same
under torchrun, where the process group is started once for all the runs (each run then builds
its own device mesh), so that several layouts share one launch.

A spec holds the model config, the pretrain config and the folders.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from tokenmill.model.config import ModelConfig
from tokenmill.pretrain.config import PretrainConfig
from tokenmill.pretrain.loop import train

if __name__ == "__main__":
    torch.set_num_threads(1)  # two processes on two busy cores; and bitwise-repeatable sums
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    for path in sys.argv[1:]:
        spec = json.loads(Path(path).read_text())
        train(
            ModelConfig.model_validate(spec["model"]),
            Path(spec["tokens"]),
            spec.get("tokenizer") and Path(spec["tokenizer"]),
            PretrainConfig.model_validate(spec["pretrain"]),
            Path(spec["work"]),
            Path(spec["out"]),
            spec.get("resume", False),
        )
    if dist.is_initialized():
        dist.destroy_process_group()
