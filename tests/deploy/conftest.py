"""A tiny trained tokenizer and tiny random models, made once per test session, for the serving tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch
from serve_helpers import EXTRA, tiny_model

from tokenmill.model import save_model
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for each module (its module-scoped fixtures too): these models are tiny,
    and on shared cores more threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve_corpus")
    with ShardWriter(folder) as writer:
        for i, name in enumerate(sorted(topics)[:12]):
            writer.write(Document(f"reference/{i}", topics[name][:3000], "reference"))
        for i, text in enumerate(EXTRA):
            writer.write(Document(f"extra/{i}", text * 5, "extra"))
    out = tmp_path_factory.mktemp("serve_tokenizer")
    train_tokenizer(writer.paths, TokenizerConfig(kind="bpe", vocab_size=400, min_frequency=2), out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir) -> Tokenizer:
    return Tokenizer.load(tokenizer_dir)


@pytest.fixture(scope="session")
def model(tokenizer):
    return tiny_model(tokenizer)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, model, tokenizer_dir) -> Path:
    """A self-contained model folder: weights, model.json and the tokenizer's files."""
    out = save_model(model, tmp_path_factory.mktemp("serve_model") / "tiny-llama")
    for f in tokenizer_dir.iterdir():
        shutil.copyfile(f, out / f.name)
    return out
