"""A tiny world for the alignment tests: a corpus of real documented items (stdlib modules and
man-page-shaped documents written here), a tokenizer trained on it, and a small model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from align_corpus import documents

from tokenmill.shards import ShardWriter


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("align-corpus")
    with ShardWriter(folder) as writer:
        for doc in documents():
            writer.write(doc)
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, corpus_dir) -> Path:
    from tokenmill.shards import shard_paths
    from tokenmill.tokenizer import TokenizerConfig, train_tokenizer

    out = tmp_path_factory.mktemp("align-tokenizer")
    train_tokenizer(shard_paths(corpus_dir), TokenizerConfig(kind="bpe", vocab_size=600), out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from tokenmill.tokenizer import Tokenizer

    return Tokenizer.load(tokenizer_dir)


TINY = dict(context_length=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, tokenizer_dir, tokenizer) -> Path:
    """A randomly initialised tiny model folder with the tokenizer files: the base of SFT."""
    import torch

    from tokenmill.model.config import ModelConfig
    from tokenmill.model.io import build_model, copy_tokenizer, save_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=tokenizer.vocab_size, **TINY), device="cpu")
    out = tmp_path_factory.mktemp("align-model")
    save_model(model, out)
    copy_tokenizer(tokenizer_dir, out)
    return out


@pytest.fixture(scope="session")
def hub_tokenizer_dir(tmp_path_factory) -> Path:
    """Llama 3's own tokenizer files, with the generation_config.json of its instruct model."""
    import json
    import shutil

    from hub_tokenizers import hub_tokenizer

    out = tmp_path_factory.mktemp("llama3-tokenizer")
    for f in hub_tokenizer("llama3").iterdir():
        shutil.copyfile(f, out / f.name)
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": [128001, 128009]}))
    return out


@pytest.fixture(scope="session")
def hub_tokenizer(hub_tokenizer_dir):
    from tokenmill.tokenizer import Tokenizer

    return Tokenizer.load(hub_tokenizer_dir)


@pytest.fixture(scope="session")
def hub_model_dir(tmp_path_factory, hub_tokenizer_dir, hub_tokenizer) -> Path:
    """A tiny model folder that carries a Hub model's tokenizer, as `tokenmill convert` writes one."""
    import torch

    from tokenmill.model.config import ModelConfig
    from tokenmill.model.io import build_model, copy_tokenizer, save_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=hub_tokenizer.vocab_size, **dict(TINY, d_model=16, n_heads=2, n_kv_heads=1)), device="cpu")
    out = tmp_path_factory.mktemp("hub-model")
    save_model(model, out)
    copy_tokenizer(hub_tokenizer_dir, out)
    return out
