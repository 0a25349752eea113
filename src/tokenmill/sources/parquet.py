"""Parquet files: one document per row, its text in the `text_key` column.

Files are read in record batches, so memory holds one batch, never a whole table; a row group
of long texts is read in batches of fewer rows. A row is size-checked while still in Arrow's
buffers: one whose text (or any other string) is larger than `max_doc_bytes` is skipped as
"too_large" before it becomes a Python object. Binary columns are not read at all: no shard
could hold their values. Rows are numbered from 0 across the file (`path#ROW`), as pyarrow
and pandas number them. A file that is not Parquet, or breaks part-way, is recorded as
"unreadable" and the next file is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tokenmill.compression import SpecialFileError, check_regular
from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.records import RecordFileSource, record_document

PARQUET_SUFFIXES = (".parquet", ".pq")

# Rows per batch: small enough that a batch of long documents stays far below a gigabyte.
BATCH_ROWS = 1024
# Uncompressed bytes per batch, by the row group's own figures: fewer rows where rows are long.
BATCH_BYTES = 64_000_000


def _is_binary(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


class ParquetSource(RecordFileSource):
    """Parquet files, directories of them, or glob patterns."""

    suffixes: ClassVar[tuple[str, ...]] = PARQUET_SUFFIXES
    kind: Literal["parquet"] = "parquet"

    def _file_documents(self, path: str, skips: SkipLog) -> Iterator[Document]:
        row = 0
        try:
            check_regular(path)  # pyarrow would block on a FIFO
            with pq.ParquetFile(path) as pf:
                schema = pf.schema_arrow
                if self.text_key not in schema.names:
                    skips.skip("missing_text", path, f"no column {self.text_key!r}; columns: {schema.names}")
                    return
                columns = [f.name for f in schema if f.name == self.text_key or not _is_binary(f.type)]
                strings = [f.name for f in schema if f.name in columns and _is_string(f.type)]
                for group in range(pf.num_row_groups):
                    batches = pf.iter_batches(batch_size=_batch_rows(pf, group), row_groups=[group], columns=columns)
                    for batch in batches:
                        for record in self._records(batch, strings, path, row, skips):
                            location = f"{path}#{row}"
                            row += 1
                            if record is None:
                                continue
                            doc = record_document(record, self.text_key, location, self.domain, self.max_doc_bytes, skips)
                            if doc is not None:
                                yield doc
        except SpecialFileError as e:
            skips.skip("special_file", path, str(e))
        except (pa.ArrowException, OSError) as e:
            # Rows already yielded stay; `row` says where the file broke.
            skips.skip("unreadable", path if row == 0 else f"{path}#{row}", str(e))

    def _records(
        self, batch: pa.RecordBatch, strings: list[str], path: str, first_row: int, skips: SkipLog
    ) -> list[dict[str, Any] | None]:
        """The batch's rows as dicts, None for each row with a string over `max_doc_bytes`
        (recorded in `skips`), which is never turned into a Python string."""
        over: dict[int, str] = {}
        for name in strings:
            lengths = pc.binary_length(batch.column(name))  # UTF-8 bytes, from the offsets alone
            large = pc.greater(lengths, self.max_doc_bytes)
            if not pc.any(large).as_py():
                continue
            for i in pc.indices_nonzero(pc.fill_null(large, False)).to_pylist():
                if i not in over:
                    what = "" if name == self.text_key else f" in column {name!r}"
                    over[i] = f"{lengths[i].as_py():,} bytes{what} > max_doc_bytes {self.max_doc_bytes:,}"
        if not over:
            return batch.to_pylist()
        for i, detail in sorted(over.items()):
            skips.skip("too_large", f"{path}#{first_row + i}", detail)
        kept = [i for i in range(batch.num_rows) if i not in over]
        records = iter(batch.take(pa.array(kept, pa.int64())).to_pylist())
        return [None if i in over else next(records) for i in range(batch.num_rows)]


def _batch_rows(pf: pq.ParquetFile, group: int) -> int:
    meta = pf.metadata.row_group(group)
    if meta.num_rows == 0 or meta.total_byte_size <= 0:
        return BATCH_ROWS
    return max(1, min(BATCH_ROWS, BATCH_BYTES * meta.num_rows // meta.total_byte_size))
