"""Fixtures of the explorer's tests: one small run, made once for all of them."""

from pathlib import Path

import pytest
from explorer_run import PRESET, planted_corpus, tiny_settings

from tokenmill.config import load_config
from tokenmill.run import run_pipeline


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    import torch

    root = tmp_path_factory.mktemp("explorer")
    corpus = root / "planted.jsonl"
    planted_corpus(corpus)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model spends more time handing work between threads than computing
    try:
        run = run_pipeline(load_config(PRESET, tiny_settings(root / "run", corpus)))
    finally:
        torch.set_num_threads(threads)
    return run.root
