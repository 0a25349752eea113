"""Records as documents (a JSON line, a Parquet or dataset row): the text from one field, the
`meta` from the others; and the sources that read files of records.

Shards are JSON written as UTF-8, so every value is made JSON-safe: dates become ISO strings,
lone surrogates (from a JSON escape) are replaced, and what JSON cannot hold is dropped.
"""

from __future__ import annotations

import datetime
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from tokenmill.sources.base import SourceConfig, check_text, expand_paths, replace_surrogates, stat_fingerprint
from tokenmill.sources.document import Document, SkipLog

# Nested dicts merged into a document's meta, so that re-read output keeps its metadata flat.
_NESTED_META_KEYS = ("meta", "metadata")


def _json_safe(value: Any) -> tuple[bool, Any]:
    """(ok, value) where value can go through `json.dumps`; dates become ISO strings.

    Parquet and datasets rows may hold bytes, decimals or images, which a JSONL shard cannot.
    """
    if isinstance(value, str):
        return True, replace_surrogates(value)
    if value is None or isinstance(value, (bool, int, float)):
        return True, value
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date subclass
        return True, value.isoformat()
    if isinstance(value, (list, tuple)):
        items = [_json_safe(v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if isinstance(value, dict):
        pairs = [(k, _json_safe(v)) for k, v in value.items()]
        ok = all(isinstance(k, str) and okv for k, (okv, _) in pairs)
        return ok, {replace_surrogates(k): v for k, (_, v) in pairs} if ok else None
    return False, None


def _put_safe(meta: dict[str, Any], key: Any, value: Any) -> None:
    ok, safe = _json_safe(value)
    if ok and isinstance(key, str):
        meta[replace_surrogates(key)] = safe


def record_meta(record: dict[str, Any], text_key: str, location: str) -> dict[str, Any]:
    """A document's meta from the other fields of its record.

    A nested "meta"/"metadata" dict is merged in first, so the record's own top-level fields win
    a clash; the record's "id" is kept as "orig_id" because `Document.id` is ours. Values that
    are not JSON-serialisable are dropped. `location` is always set, and always ours.
    """
    meta: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in record.items():
        if key == text_key:
            continue
        if key in _NESTED_META_KEYS and isinstance(value, dict):
            for k, v in value.items():
                _put_safe(meta, k, v)
        else:
            rest["orig_id" if key == "id" else key] = value
    for key, value in rest.items():
        _put_safe(meta, key, value)
    meta["location"] = location
    return meta


def record_document(
    record: dict[str, Any], text_key: str, location: str, domain: str, max_doc_bytes: int, skips: SkipLog
) -> Document | None:
    """The document of a record whose text is under `text_key`, with id `location`; None, recorded
    in `skips`, when the record has no text or its text is skipped by `check_text`."""
    text = record.get(text_key)
    if not isinstance(text, str):
        what = "absent" if text_key not in record else ("null" if text is None else f"a {type(text).__name__}")
        skips.skip("missing_text", location, f"{text_key!r} is {what}")
        return None
    text = check_text(text, skips, location, max_doc_bytes)
    if text is None:
        return None
    return Document(id=location, text=text, source=domain, meta=record_meta(record, text_key, location))


class RecordFileSource(SourceConfig):
    """Files of records, directories of them, or glob patterns: one document per record.

    Subclasses set `kind` and `suffixes`, and read one file in `_file_documents`.
    """

    suffixes: ClassVar[tuple[str, ...]]  # of the files a directory contributes

    kind: str  # declared here so that it stays first of these fields in the config's fingerprint
    paths: list[str] = Field(..., min_length=1, description="Files, directories or glob patterns.")
    text_key: str = Field("text", description="The field, or column, that holds the document text.")

    def files(self) -> list[Path]:
        return expand_paths(self.paths, self.suffixes)

    def fingerprint(self) -> str:
        # The whole config goes in: text_key, limit or max_doc_bytes change what is read.
        return stat_fingerprint(self.files(), self.model_dump_json())

    def read(self, skips: SkipLog) -> Iterator[Document]:
        for path in self.files():
            yield from self._file_documents(str(path), skips)

    @abstractmethod
    def _file_documents(self, path: str, skips: SkipLog) -> Iterator[Document]:
        ...
