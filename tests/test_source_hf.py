"""HFDatasetSource: datasets saved to disk (Dataset and DatasetDict), streamed or not."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tokenmill.errors import TokenmillError
from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.hf import HFDatasetSource

datasets = pytest.importorskip("datasets")


def read(source: HFDatasetSource) -> tuple[list[Document], SkipLog]:
    skips = SkipLog()
    return list(source.documents(skips)), skips


@pytest.fixture
def saved_dataset(tmp_path: Path) -> Path:
    path = tmp_path / "ds"
    datasets.Dataset.from_dict(
        {
            "text": ["first", None, "third", " ", "fifth"],
            "id": ["a", "b", "c", "d", "e"],
            "score": [0.1, 0.2, 0.3, 0.4, 0.5],
        }
    ).save_to_disk(str(path))
    return path


@pytest.fixture
def saved_dict(tmp_path: Path) -> Path:
    path = tmp_path / "dd"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": ["t0", "t1", "t2"]}),
            "test": datasets.Dataset.from_dict({"text": ["s0", "s1"]}),
        }
    ).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("streaming", [False, True])
def test_saved_dataset(saved_dataset: Path, streaming: bool) -> None:
    docs, skips = read(HFDatasetSource(path=str(saved_dataset), streaming=streaming, domain="wiki"))
    prefix = f"hf:{saved_dataset}/train#"
    assert docs == [
        Document(
            id=f"{prefix}{i}",
            text=text,
            source="wiki",
            meta={"orig_id": orig, "score": score, "location": f"{prefix}{i}"},
        )
        for i, text, orig, score in [(0, "first", "a", 0.1), (2, "third", "c", 0.3), (4, "fifth", "e", 0.5)]
    ]
    assert dict(skips.skipped) == {"missing_text": 1, "empty": 1}
    assert skips.summary()["skipped"]["missing_text"]["examples"][0]["location"] == f"{prefix}1"


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize("split, texts", [("train", ["t0", "t1", "t2"]), ("test", ["s0", "s1"])])
def test_saved_dataset_dict(saved_dict: Path, streaming: bool, split: str, texts: list[str]) -> None:
    docs, _ = read(HFDatasetSource(path=str(saved_dict), split=split, streaming=streaming))
    assert [(d.id, d.text) for d in docs] == [(f"hf:{saved_dict}/{split}#{i}", t) for i, t in enumerate(texts)]


def test_limit(saved_dict: Path) -> None:
    docs, _ = read(HFDatasetSource(path=str(saved_dict), limit=2))
    assert [d.text for d in docs] == ["t0", "t1"]


def test_unknown_split_names_the_available_ones(saved_dict: Path) -> None:
    with pytest.raises(TokenmillError, match=r"no split 'validation'; available: test, train"):
        read(HFDatasetSource(path=str(saved_dict), split="validation"))


def test_missing_text_column(saved_dict: Path) -> None:
    with pytest.raises(TokenmillError, match=r"no column 'body'.*'text'"):
        read(HFDatasetSource(path=str(saved_dict), text_key="body"))


def test_load_dataset_from_a_local_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "data"
    data.mkdir()
    (data / "part.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    source = HFDatasetSource(path=str(data), streaming=True)
    docs, _ = read(source)
    assert [(d.id, d.text) for d in docs] == [(f"hf:{data}/train#0", "x"), (f"hf:{data}/train#1", "y")]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenmillError, match=f"cannot load dataset {empty}: "):
        read(HFDatasetSource(path=str(empty)))


def test_missing_datasets_package(saved_dict: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(TokenmillError, match=r"pip install 'tokenmill\[hf\]'"):
        read(HFDatasetSource(path=str(saved_dict)))


def test_fingerprint(saved_dataset: Path) -> None:
    local = HFDatasetSource(path=str(saved_dataset))
    first = local.fingerprint()
    assert local.fingerprint() == first
    (saved_dataset / "extra.txt").write_text("changed")
    assert local.fingerprint() != first

    hub = HFDatasetSource(path="org/corpus")
    assert hub.fingerprint() == HFDatasetSource(path="org/corpus").fingerprint()
    assert hub.fingerprint() != HFDatasetSource(path="org/corpus", split="test").fingerprint()
    assert hub.fingerprint() != HFDatasetSource(path="org/corpus", name="en").fingerprint()
