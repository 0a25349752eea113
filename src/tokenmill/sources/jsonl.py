"""JSON Lines files (plain, gzip or zstandard): one JSON object per line, its text under `text_key`.

Files are read line by line as bytes, never whole, and a line longer than `max_doc_bytes` is
read on in bounded chunks and dropped without being parsed: one 50 MB line in a dump costs
a counter, not 50 MB of JSON objects. A compressed file is read no further than
`max_decompressed_bytes`. Every line that does not become a document is recorded in the
`SkipLog` with its `path:LINE` (1-based, as an editor shows it) and reading goes on.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO, ClassVar, Literal

from tokenmill.compression import (
    TRUNCATION_ERRORS,
    DecompressionLimitExceeded,
    SpecialFileError,
    open_binary,
)
from tokenmill.sources.base import DEFAULT_MAX_DECOMPRESSED_BYTES, MaxDecompressedBytes
from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.records import RecordFileSource, record_document

# What a directory contributes; a file or glob named explicitly is read whatever its suffix.
# Plain ".json" is left out on purpose: it is usually one JSON document, not JSON Lines.
JSONL_SUFFIXES = tuple(
    base + comp
    for base in (".jsonl", ".ndjson", ".json")
    for comp in ("", ".gz", ".zst", ".zstd")
    if base + comp != ".json"
)

# How much of an oversized line is read at a time while skipping past it.
_DRAIN_CHUNK = 1 << 20

def _read_lines(stream: BinaryIO, max_bytes: int) -> Iterator[tuple[bytes | None, int]]:
    """(line, size) for each line of `stream`, without its newline.

    `line` is None when `size` exceeds `max_bytes`: such a line is consumed in chunks and never
    held whole. Decompression errors (a truncated file) propagate to the caller.
    """
    while True:
        chunk = stream.readline(max_bytes + 1)
        if not chunk:
            return
        if chunk.endswith(b"\n"):
            yield chunk[:-1], len(chunk) - 1
        elif len(chunk) <= max_bytes:  # the file's last line, without a newline
            yield chunk, len(chunk)
        else:
            size = len(chunk)
            while True:
                more = stream.readline(_DRAIN_CHUNK)
                size += len(more)
                if not more or more.endswith(b"\n"):
                    break
            if more.endswith(b"\n"):
                size -= 1
            yield None, size


class JsonlSource(RecordFileSource):
    """JSON Lines files, directories of them, or glob patterns."""

    suffixes: ClassVar[tuple[str, ...]] = JSONL_SUFFIXES
    kind: Literal["jsonl"] = "jsonl"
    max_decompressed_bytes: MaxDecompressedBytes = DEFAULT_MAX_DECOMPRESSED_BYTES

    def _file_documents(self, path: str, skips: SkipLog) -> Iterator[Document]:
        lineno = 0
        try:
            with open_binary(path, self.max_decompressed_bytes) as stream:
                for raw, size in _read_lines(stream, self.max_doc_bytes):
                    lineno += 1
                    doc = self._line_document(raw, size, f"{path}:{lineno}", lineno, skips)
                    if doc is not None:
                        yield doc
        except TRUNCATION_ERRORS as e:
            # Every complete line before the break has been yielded; the one in progress is lost.
            skips.skip("truncated_file", f"{path}:{lineno + 1}", str(e))
        except DecompressionLimitExceeded as e:
            # As for a cut: what came before stays, the line in progress and the rest do not.
            skips.skip("decompression_limit", f"{path}:{lineno + 1}", str(e))
        except SpecialFileError as e:
            skips.skip("special_file", path, str(e))
        except OSError as e:  # gone, a directory, a disk error: the file stops here, the run goes on
            skips.skip("unreadable", path if lineno == 0 else f"{path}:{lineno + 1}", str(e))

    def _line_document(
        self, raw: bytes | None, size: int, location: str, lineno: int, skips: SkipLog
    ) -> Document | None:
        if raw is None:
            skips.skip("too_large", location, f"{size:,} bytes > max_doc_bytes {self.max_doc_bytes:,}")
            return None
        if not raw.strip():
            return None
        try:
            line = raw.decode("utf-8")
            bad_utf8_at = None
        except UnicodeDecodeError as e:
            line = raw.decode("utf-8", errors="replace")
            bad_utf8_at = e.start
        if lineno == 1 and line.startswith("\ufeff"):
            line = line[1:]
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, a 5000-digit int, [[[[...]]]]
            skips.skip("malformed_json", location, str(e))
            return None
        if not isinstance(record, dict):
            skips.skip("missing_text", location, f"a JSON {type(record).__name__}, not an object")
            return None
        doc = record_document(record, self.text_key, location, self.domain, self.max_doc_bytes, skips)
        if doc is not None and bad_utf8_at is not None:
            # Counted only now: a repair is for input that became a document.
            skips.repair("invalid_utf8", location, f"first bad byte at offset {bad_utf8_at}")
        return doc
