"""A small corpus of three domains and one tokenizer of each kind, trained once per test session."""

from __future__ import annotations

import sysconfig
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer import TokenizerConfig, train_tokenizer

# Written for these tests: text in several scripts, with numbers, emoji and combining marks.
WORLD = [
    "Die Würde des Menschen ist unantastbar. Größe: 1,75 m; Straße Nr. 12.",
    "Все люди рождаются свободными и равными в своём достоинстве и правах.",
    "人人生而自由，在尊严和权利上一律平等。東京は日本の首都です。",
    "جميع الناس يولدون أحرارا متساوين في الكرامة والحقوق.",
    "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता प्राप्त है।",
    "Emoji: 👩‍👩‍👧‍👦 🇫🇷 👍🏽 ✔︎ — café, naïve, e\u0301 (e + combining acute), Å, ﬁ ligature.",
    "Prices: $3.14, €2,718.28, 0x1F, 1e-9, 100%; tabs\tand\r\nwindows line ends.",
]
STDLIB = ["json/decoder.py", "textwrap.py", "shlex.py", "string.py", "bisect.py", "heapq.py"]


def corpus_documents() -> list[Document]:
    docs = []
    lib = Path(sysconfig.get_paths()["stdlib"])
    for name in STDLIB:
        docs.append(Document(f"code/{name}", (lib / name).read_text(encoding="utf-8"), "code"))
    for name in sorted(topics)[:60]:
        docs.append(Document(f"reference/{name}", topics[name], "reference"))
    for i in range(40):
        text = "\n".join(WORLD[(i + k) % len(WORLD)] for k in range(1 + i % 4))
        docs.append(Document(f"world/{i}", text, "world"))
    return docs


@pytest.fixture(scope="session")
def documents() -> list[Document]:
    return corpus_documents()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, documents) -> list[Path]:
    """The corpus as two document shards."""
    folder = tmp_path_factory.mktemp("corpus")
    with ShardWriter(folder, shard_bytes=150_000) as writer:
        for doc in documents:
            writer.write(doc)
    return writer.paths


TOKENIZERS = {
    "bpe": dict(kind="bpe", vocab_size=1200),
    "bpe-gpt2": dict(kind="bpe", vocab_size=800, pretokenizer="gpt2"),
    "spm-unigram": dict(kind="spm", spm_model="unigram", vocab_size=1200),
    "spm-bpe": dict(kind="spm", spm_model="bpe", vocab_size=1200),
}


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus) -> dict[str, Path]:
    """Name -> folder of a tokenizer trained on the corpus, for each entry of TOKENIZERS (lazily)."""
    return _Trained(tmp_path_factory, corpus)


class _Trained(dict):
    def __init__(self, factory, corpus) -> None:
        super().__init__()
        self.factory, self.corpus = factory, corpus

    def __missing__(self, name: str) -> Path:
        out = self.factory.mktemp(name)
        train_tokenizer(self.corpus, TokenizerConfig(**TOKENIZERS[name]), out)
        self[name] = out
        return out
