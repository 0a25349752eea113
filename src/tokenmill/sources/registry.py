"""Every source kind, the config union that selects one by `kind`, and guessing a kind from a path."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from tokenmill.errors import TokenmillError
from tokenmill.sources.base import SourceConfig
from tokenmill.sources.hf import HFDatasetSource
from tokenmill.sources.jsonl import JsonlSource
from tokenmill.sources.local import LocalCorpusSource
from tokenmill.sources.parquet import ParquetSource
from tokenmill.sources.textdir import TextFolderSource
from tokenmill.sources.warc import WarcSource

AnySource = Annotated[
    LocalCorpusSource | JsonlSource | ParquetSource | WarcSource | TextFolderSource | HFDatasetSource,
    Field(discriminator="kind"),
]

SOURCE_KINDS = frozenset(
    cls.model_fields["kind"].default
    for cls in (LocalCorpusSource, JsonlSource, ParquetSource, WarcSource, TextFolderSource, HFDatasetSource)
)

_SUFFIX_KINDS = (
    ((".jsonl", ".jsonl.gz", ".jsonl.zst", ".json.gz", ".json.zst", ".ndjson"), "jsonl"),
    ((".parquet",), "parquet"),
    ((".warc", ".warc.gz", ".wet", ".wet.gz", ".warc.wet.gz"), "warc"),
)


def _is_saved_dataset(path: Path) -> bool:
    return any((path / marker).exists() for marker in ("dataset_info.json", "state.json", "dataset_dict.json"))


def source_for_path(path: str, domain: str | None = None) -> SourceConfig:
    """The source that reads `path`, chosen by its extension, or by its content for a folder.

    A folder saved by `datasets.save_to_disk` is a dataset; a folder holding only files of one
    known format is read as that format; any other folder is a folder of text files.
    """
    p = Path(path)
    if not p.exists():
        raise TokenmillError(f"input not found: {path}")
    extra = {"domain": domain} if domain else {}
    if p.is_dir():
        if _is_saved_dataset(p):
            return HFDatasetSource(path=str(p), **extra)
        kinds = {_kind_of(f.name) for f in p.rglob("*") if f.is_file() and not f.name.startswith(".")}
        if len(kinds) == 1 and None not in kinds:
            kind = kinds.pop()
            return _build(kind, str(p), extra)
        return TextFolderSource(paths=[str(p)], **extra)
    kind = _kind_of(p.name)
    return _build(kind or "text", str(p), extra)


def _kind_of(name: str) -> str | None:
    name = name.lower()
    for suffixes, kind in _SUFFIX_KINDS:
        if name.endswith(suffixes):
            return kind
    return None


def _build(kind: str, path: str, extra: dict) -> SourceConfig:
    cls = {"jsonl": JsonlSource, "parquet": ParquetSource, "warc": WarcSource, "text": TextFolderSource}[kind]
    return cls(paths=[path], **extra)
