"""Parquet files: one document per row, its text in the `text_key` column.

Files are read in record batches, so memory holds one batch, never a whole table. Rows are
numbered from 0 across the file (`path#ROW`), as pyarrow and pandas number them. A file that
is not Parquet, or breaks part-way, is recorded as "unreadable" and the next file is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.records import RecordFileSource, record_document

PARQUET_SUFFIXES = (".parquet", ".pq")

# Rows per batch: small enough that a batch of long documents stays far below a gigabyte.
BATCH_ROWS = 1024


class ParquetSource(RecordFileSource):
    """Parquet files, directories of them, or glob patterns."""

    suffixes: ClassVar[tuple[str, ...]] = PARQUET_SUFFIXES
    kind: Literal["parquet"] = "parquet"

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
                        doc = record_document(record, self.text_key, location, self.domain, self.max_doc_bytes, skips)
                        if doc is not None:
                            yield doc
        except (pa.ArrowException, OSError) as e:
            # Rows already yielded stay; `row` says where the file broke.
            skips.skip("unreadable", path if row == 0 else f"{path}#{row}", str(e))
