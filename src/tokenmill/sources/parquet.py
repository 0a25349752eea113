"""Parquet files: one document per row, its text in the `text_key` column.

Files are read in record batches, so memory holds one batch, never a whole table. Rows are
numbered from 0 across the file (`path#ROW`), as pyarrow and pandas number them. A file that
is not Parquet, or breaks part-way, is recorded as "unreadable" and the next file is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from tokenmill.sources.base import SourceConfig, check_text, expand_paths, stat_fingerprint
from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.records import record_meta

PARQUET_SUFFIXES = (".parquet", ".pq")

# Rows per batch: small enough that a batch of long documents stays far below a gigabyte.
BATCH_ROWS = 1024


class ParquetSource(SourceConfig):
    """Parquet files, directories of them, or glob patterns."""

    kind: Literal["parquet"] = "parquet"
    paths: list[str] = Field(..., min_length=1, description="Files, directories or glob patterns.")
    text_key: str = Field("text", description="The column that holds the document text.")

    def files(self) -> list[Path]:
        return expand_paths(self.paths, PARQUET_SUFFIXES)

    def fingerprint(self) -> str:
        # The whole config goes in: text_key, limit or max_doc_bytes change what is read.
        return stat_fingerprint(self.files(), self.model_dump_json())

    def documents(self, skips: SkipLog) -> Iterator[Document]:
        produced = 0
        for path in self.files():
            for doc in self._file_documents(str(path), skips):
                yield doc
                produced += 1
                if self.limit is not None and produced >= self.limit:
                    return

    def _file_documents(self, path: str, skips: SkipLog) -> Iterator[Document]:
        row = 0
        try:
            with pq.ParquetFile(path) as pf:
                columns = pf.schema_arrow.names
                if self.text_key not in columns:
                    skips.skip("missing_text", path, f"no column {self.text_key!r}; columns: {columns}")
                    return
                for batch in pf.iter_batches(batch_size=BATCH_ROWS):
                    for record in batch.to_pylist():
                        location = f"{path}#{row}"
                        row += 1
                        doc = self._row_document(record, location, skips)
                        if doc is not None:
                            yield doc
        except (pa.ArrowException, OSError) as e:
            # Rows already yielded stay; `row` says where the file broke.
            skips.skip("unreadable", path if row == 0 else f"{path}#{row}", str(e))

    def _row_document(self, record: dict, location: str, skips: SkipLog) -> Document | None:
        text = record[self.text_key]
        if not isinstance(text, str):
            what = "null" if text is None else f"a {type(text).__name__}"
            skips.skip("missing_text", location, f"{self.text_key!r} is {what}")
            return None
        text = check_text(text, skips, location, self.max_doc_bytes)
        if text is None:
            return None
        return Document(id=location, text=text, source=self.domain, meta=record_meta(record, self.text_key, location))
