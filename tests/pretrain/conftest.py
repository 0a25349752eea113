"""Token shards of a small corpus, tiny models, and launching training runs (one process or torchrun)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest
import torch

from tokenmill.model import load_preset, tiny
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer import EncodeConfig, Tokenizer, TokenizerConfig, encode_corpus, train_tokenizer

STDLIB = ["textwrap.py", "shlex.py", "string.py", "bisect.py", "heapq.py", "json/decoder.py", "json/encoder.py", "fnmatch.py"]

torch.set_num_threads(1)  # the tests share two cores, and one thread sums in a fixed order


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """A byte-level BPE tokenizer (vocab 320) and token shards (train and val) of ~150 KB of Python."""
    root = tmp_path_factory.mktemp("pretrain-corpus")
    lib = Path(sysconfig.get_paths()["stdlib"])
    with ShardWriter(root / "docs") as writer:
        for name in STDLIB:
            text = (lib / name).read_text(encoding="utf-8")
            # Split each module in pieces: more documents, so that both splits get some.
            for i in range(0, len(text), 4000):
                writer.write(Document(f"{name}/{i}", text[i : i + 4000], "code"))
    train_tokenizer(writer.paths, TokenizerConfig(kind="bpe", vocab_size=320), root / "tokenizer")
    encode_corpus(writer.paths, root / "tokenizer", root / "tokens", EncodeConfig(val_fraction=0.1, workers=1))
    return {"tokens": root / "tokens", "tokenizer": root / "tokenizer"}


@pytest.fixture(scope="session")
def vocab_size(corpus) -> int:
    return Tokenizer.load(corpus["tokenizer"]).vocab_size


@pytest.fixture(scope="session")
def model_config(vocab_size):
    """LLaMA-style (RoPE, RMSNorm, SwiGLU, GQA 4:2, tied embeddings), d_model 64, 2 layers."""
    return tiny(load_preset("nano"), vocab_size=vocab_size)
