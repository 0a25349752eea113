"""Runs one pre-training process from a JSON spec: `python worker.py SPEC` or under torchrun.

The spec holds the model config, the pretrain config and the folders; tests launch it as a
subprocess so that it can be killed, or under torchrun for the parallel layouts.
"""

import json
import sys
from pathlib import Path

import torch

from tokenmill.model.config import ModelConfig
from tokenmill.pretrain.config import PretrainConfig
from tokenmill.pretrain.loop import train

if __name__ == "__main__":
    torch.set_num_threads(1)  # two processes on two busy cores; and bitwise-repeatable sums
    spec = json.loads(Path(sys.argv[1]).read_text())
    train(
        ModelConfig.model_validate(spec["model"]),
        Path(spec["tokens"]),
        spec.get("tokenizer") and Path(spec["tokenizer"]),
        PretrainConfig.model_validate(spec["pretrain"]),
        Path(spec["work"]),
        Path(spec["out"]),
        spec.get("resume", False),
    )
