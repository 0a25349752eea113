"""A tiny world for the alignment tests: a corpus of real documented items (stdlib modules and
man-page-shaped documents written here), a tokenizer trained on it, and a small model folder."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document

STDLIB = [
    "textwrap.py", "shlex.py", "bisect.py", "heapq.py", "colorsys.py", "fnmatch.py", "glob.py", "keyword.py",
    "calendar.py", "difflib.py", "statistics.py", "shutil.py", "string.py", "queue.py",
]
# (name, section, summary) of man pages, written for these tests in the format of man(1) output.
MAN = [
    ("frobnicate", "1", "adjust the frobnication level of a file"),
    ("quuxctl", "8", "control the quux daemon"),
    ("wibble", "1", "print a line of wibbles"),
    ("zapfd", "2", "close every descriptor above a number"),
    ("plonk", "1", "drop a file into the nearest bucket"),
    ("grumble", "6", "complain about the weather in verse"),
]


def man_page(name: str, section: str, summary: str) -> str:
    head = f"{name.upper()}({section})"
    return (
        f"{head}{' ' * 20}General Commands Manual{' ' * 20}{head}\n\nNAME\n       {name} - {summary}\n\n"
        f"SYNOPSIS\n       {name} [option]... file...\n\nDESCRIPTION\n       {name} does what it says.\n"
    )


def documents() -> list[Document]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs = [
        Document(f"stdlib/{n}", (lib / n).read_text(encoding="utf-8"), "code", {"language": "python"}) for n in STDLIB
    ]
    docs += [Document(f"man/man{s}/{n}.{s}", man_page(n, s, w), "manuals") for n, s, w in MAN]
    docs.append(Document("web/0", "Plain prose that documents nothing in particular.", "web"))
    return docs


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
