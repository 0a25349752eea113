"""Hugging Face datasets: one saved with `save_to_disk`, a hub name, or a local loading script.

`datasets` is an optional extra, imported only when such a source is read. Rows are numbered
from 0 (`hf:PATH/SPLIT#INDEX`), as `dataset[i]` numbers them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tokenmill.errors import TokenmillError
from tokenmill.sources.base import SourceConfig, stat_fingerprint
from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.records import record_document

# Files `save_to_disk` writes: the first two for a Dataset, the last for a DatasetDict.
SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


class HFDatasetSource(SourceConfig):
    """A Hugging Face dataset split, read in full or streamed."""

    kind: Literal["hf"] = "hf"
    path: str = Field(..., description="A directory written by save_to_disk, a hub name or a loading script dir.")
    split: str = Field("train", description="The split to read (ignored for a single saved Dataset).")
    streaming: bool = Field(False, description="Stream rows instead of loading (or downloading) the split first.")
    text_key: str = Field("text", description="The column that holds the document text.")
    name: str | None = Field(None, description="The dataset's config name, if it has several.")

    def is_saved(self) -> bool:
        p = Path(self.path).expanduser()
        return p.is_dir() and any((p / marker).is_file() for marker in SAVED_MARKERS)

    def fingerprint(self) -> str:
        p = Path(self.path).expanduser()
        if p.is_dir():
            return stat_fingerprint(sorted(f for f in p.rglob("*") if f.is_file()), self.model_dump_json())
        # A hub dataset: its name, split and config are all that can be known offline.
        return stat_fingerprint([], self.model_dump_json())

    def read(self, skips: SkipLog) -> Iterator[Document]:
        label = self.path if self.name is None else f"{self.path}/{self.name}"
        for index, record in enumerate(self._rows()):
            location = f"hf:{label}/{self.split}#{index}"
            doc = record_document(record, self.text_key, location, self.domain, self.max_doc_bytes, skips)
            if doc is not None:
                yield doc

    def _rows(self) -> Iterable[dict[str, Any]]:
        try:
            import datasets
        except ImportError as e:
            raise TokenmillError(
                f"the hf source needs the datasets package ({e}): pip install 'tokenmill[hf]'"
            ) from e
        ds = self._load_saved(datasets) if self.is_saved() else self._load(datasets)
        columns = ds.column_names  # None for a streamed dataset whose features are unknown
        if columns is not None and self.text_key not in columns:
            raise TokenmillError(f"dataset {self.path} has no column {self.text_key!r}; columns: {columns}")
        return ds

    def _load_saved(self, datasets: Any) -> Any:
        try:
            ds = datasets.load_from_disk(str(Path(self.path).expanduser()))
        except Exception as e:  # datasets raises many kinds; all mean the same thing here
            raise TokenmillError(f"cannot load dataset {self.path}: {e}") from e
        if isinstance(ds, datasets.DatasetDict):
            if self.split not in ds:
                raise TokenmillError(
                    f"dataset {self.path} has no split {self.split!r}; available: {', '.join(sorted(ds))}"
                )
            ds = ds[self.split]
        # A saved dataset keeps its author's format (numpy, torch); rows must be plain Python.
        ds = ds.with_format(None)
        return ds.to_iterable_dataset() if self.streaming else ds

    def _load(self, datasets: Any) -> Any:
        try:
            return datasets.load_dataset(self.path, self.name, split=self.split, streaming=self.streaming)
        except Exception as e:  # network, unknown name, unknown split, script errors: the user's to fix
            raise TokenmillError(f"cannot load dataset {self.path}: {e}") from e
