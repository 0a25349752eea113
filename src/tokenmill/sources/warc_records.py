"""Reading the records of a WARC file with warcio, past whatever is wrong with them.

warcio stops at the first malformed record; `records` instead skips it, finds the start of
the next record (the next `WARC/1.` line, or in a per-record gzip file the next gzip member)
and goes on from there. Records are read one at a time from a seekable file, so a multi-GB
archive costs the memory of its largest record.

A hostile archive costs bounded memory and time: a header line longer than MAX_HEADER_LINE
or more than MAX_HEADER_LINES header lines (WARC or HTTP) skip the record as
"oversized_header" (warcio would gather such a line whole, with quadratic copying), and a
gzipped file is read no further than its `max_decompressed` bytes. A file that cannot be
opened, or fails part-way, ends with what was read before it, as every broken part is
recorded in the `SkipLog` at `path@offset`.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from warcio.archiveiterator import ArchiveIterator
from warcio.bufferedreaders import DecompressingBufferedReader
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord, ArcWarcRecordLoader
from warcio.statusandheaders import (
    StatusAndHeaders,
    StatusAndHeadersParser,
    StatusAndHeadersParserException,
)

from tokenmill.compression import (
    DecompressionBudget,
    DecompressionLimitExceeded,
    SpecialFileError,
    open_regular,
)
from tokenmill.sources.document import SkipLog

_GZIP_MAGIC = b"\x1f\x8b\x08"  # gzip member header: magic bytes and the deflate method
_RECORD_LINE = b"\nWARC/1."  # the first line of a record, with the line end before it
_SCAN_CHUNK = 1 << 20
_READ_CHUNK = 1 << 16
# Errors warcio raises on a record it cannot parse; zlib's on a damaged gzip member.
_PARSE_ERRORS = (ArchiveLoadFailed, StatusAndHeadersParserException, zlib.error)
# Bounds on a record's header, WARC or HTTP, line ending included. Servers send a few KiB
# (Apache refuses request lines over 8 KiB); a few hundred headers is already a lot.
MAX_HEADER_LINE = 1 << 16
MAX_HEADER_LINES = 512



class _BrokenRecord(Exception):
    """A record whose header is unusable, or whose bytes end before its Content-Length."""


class _OversizedHeader(_BrokenRecord):
    """A header line over MAX_HEADER_LINE, or more than MAX_HEADER_LINES of them.

    `at` is where the line starts, when the stream's offsets are the file's (not member by
    member); `ended` is False when the line runs on to the end of the file.
    """

    def __init__(self, message: str, at: int | None = None, ended: bool = True) -> None:
        super().__init__(message)
        self.at = at
        self.ended = ended


class _Truncated(Exception):
    """A whole-file gzip ends before its gzip stream does."""


class _GzipStream(gzip.GzipFile):
    """A whole-file gzip, read as warcio reads a raw stream, whose cut-short end raises
    `_Truncated`: warcio takes EOFError, which gzip raises there, for the normal end of the file.
    Reading past `max_bytes` of decompressed data raises `DecompressionLimitExceeded`."""

    def __init__(self, raw: BinaryIO, max_bytes: int) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._max_bytes = max_bytes

    def read(self, size: int | None = -1) -> bytes:
        # One chunk at a time (fewer bytes than asked for is fine for warcio): a full read would
        # lose the chunks it had gathered when the next one raises EOFError.
        try:
            data = self.read1(-1 if size is None else size)
        except EOFError as e:
            raise _Truncated(str(e)) from e
        # By position, not by bytes read: a seek back to resume after a broken record
        # decompresses the same bytes again, and a seek forward decompresses without reading.
        if self.tell() > self._max_bytes:
            DecompressionBudget(self.name, self._max_bytes).spend(self.tell())
        return data


class _StrictReader(DecompressingBufferedReader):
    """warcio's reader, except that damaged gzip data raises instead of reading as empty, what
    gzip members decompress to counts against the file's budget, and lines are bounded.

    warcio prints the zlib error and returns no data, which would cut the record short and
    make every later block of the file fail the same way. warcio reads only header lines (and
    the blank lines between records) with `readline`, so a bound on every line is one on the
    header lines, WARC and HTTP alike.
    """

    def __init__(self, stream: BinaryIO, members: bool, budget: DecompressionBudget) -> None:
        super().__init__(stream, decomp_type="gzip" if members else None)
        self._budget = budget

    def _decompress(self, data: bytes) -> bytes:
        if self.decompressor is None or not data:
            return data
        out = self.decompressor.decompress(data)  # a 16 KiB block: at most ~16 MiB out
        self._budget.spend(len(out))
        return out

    def readline(self, length: int | None = None) -> bytes:
        at = None if self.decompressor is not None else self.stream.tell() - self.rem_length()
        bound = MAX_HEADER_LINE + 1 if length is None else min(length, MAX_HEADER_LINE + 1)
        # warcio's readline(n) may stop short of both n and the line end (at a block boundary,
        # once n is smaller than what it has read): ask again until either is reached.
        pieces: list[bytes] = []
        size = 0
        while size < bound and (piece := super().readline(bound - size)):
            pieces.append(piece)
            size += len(piece)
            if piece.endswith(b"\n"):
                break
        if size <= MAX_HEADER_LINE:
            return b"".join(pieces)
        # Read on to the end of the line, a block at a time, to tell whether it ends at all.
        ended = False
        while not ended and (more := super().readline(MAX_HEADER_LINE)):
            ended = more.endswith(b"\n")
        raise _OversizedHeader(f"a header line over {MAX_HEADER_LINE:,} bytes", at, ended)


class _HeaderLines:
    """A record's stream as warcio's header parser reads it, counting the lines it takes."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lines = 0

    def readline(self, length: int | None = None) -> bytes:
        self._lines += 1
        if self._lines > MAX_HEADER_LINES:
            raise _OversizedHeader(f"more than {MAX_HEADER_LINES} header lines")
        return self._stream.readline(length)


class _BoundedParser(StatusAndHeadersParser):
    """warcio's header parser, which takes at most MAX_HEADER_LINES lines."""

    def parse(self, stream: BinaryIO, full_statusline: str | None = None) -> StatusAndHeaders:
        return super().parse(_HeaderLines(stream), full_statusline)


class _Loader(ArcWarcRecordLoader):
    """warcio's record parser, except that a missing WARC-Target-URI is an error, not a crash,
    and that headers are bounded."""

    def __init__(self) -> None:
        super().__init__(verify_http=False, arc2warc=False)
        self.warc_parser = _BoundedParser(self.WARC_TYPES)
        self.http_parser = _BoundedParser(self.HTTP_TYPES, verify=False)
        self.http_req_parser = _BoundedParser(self.HTTP_VERBS, verify=False)

    def load_http_headers(
        self, rec_type: str, uri: str | None, stream: BinaryIO, length: int | None
    ) -> StatusAndHeaders | None:
        if uri is None and rec_type in self.HTTP_RECORDS:
            raise _BrokenRecord(f"{rec_type} record without WARC-Target-URI")
        return super().load_http_headers(rec_type, uri, stream, length)


class _RecordIterator(ArchiveIterator):
    """warcio's iterator over a file whose compression is known, reading WARC records only."""

    # warcio prints this to stderr when a record is followed by more than blank lines; it goes
    # on by itself when a record starts on the next line, else a broken_record says where.
    INC_RECORD = ""

    def __init__(self, fileobj: BinaryIO, members: bool, budget: DecompressionBudget) -> None:
        super().__init__(fileobj)
        self.reader = _StrictReader(self.fh, members, budget)
        self.loader = _Loader()
        # Never guess ARC: a garbage line can split into the five fields of an ARC header.
        self.known_format = "warc"

    def read_to_end(self, record: ArcWarcRecord | None = None) -> None:
        # After a record come blank lines, then the first line of the next record: an
        # oversized line there is where the next record would start, not part of this one.
        try:
            super().read_to_end(record)
        except _OversizedHeader as e:
            if e.at is not None:
                self.offset = e.at
            raise


def records(
    path: Path, skips: SkipLog, max_bytes: int, max_decompressed: int, wants_payload: Callable[[ArcWarcRecord], bool]
) -> Iterator[tuple[int, ArcWarcRecord, bytes | None]]:
    """(offset, record, payload) for each readable record of `path`, skipping broken ones.

    The payload (at most `max_bytes + 1` bytes, HTTP transfer and content encodings undone)
    is read only for records that `wants_payload`; every record is read to its end here,
    so that a record cut short is found before it becomes a document. A file that cannot be
    opened, or fails part-way (gone, a disk error), ends with what was read before.
    """
    at = 0  # where the file broke, for a file that does
    try:
        with open_regular(path) as raw:
            stream, members = _open_archive(raw, max_decompressed)
            budget = DecompressionBudget(str(path), max_decompressed)
            # Only a file read as it is on disk can tell that warcio ran into its end.
            size = os.fstat(raw.fileno()).st_size if stream is raw else None
            start: int | None = 0
            while start is not None:
                stream.seek(start)
                records = _RecordIterator(stream, members, budget)
                try:
                    for record in records:
                        at = records.offset
                        _check_header(record)
                        payload = _read(record.content_stream(), max_bytes) if wants_payload(record) else None
                        _read(record.raw_stream, None)  # the rest, so that its length can be checked
                        if record.raw_stream.limit > 0:
                            raise _BrokenRecord(f"{record.raw_stream.limit:,} bytes missing")
                        yield records.offset, record, payload
                    start = None
                    # warcio ends quietly where a cut-off gzip member decompresses to nothing.
                    if size is not None and _leftover(raw, records.offset, size):
                        skips.skip("truncated_file", f"{path}@{records.offset}", f"{size - records.offset:,} bytes left unread")
                except _Truncated as e:
                    skips.skip("truncated_file", f"{path}@{records.offset}", str(e))
                    return
                except DecompressionLimitExceeded as e:
                    skips.skip("decompression_limit", f"{path}@{records.offset}", str(e))
                    return
                except (*_PARSE_ERRORS, _BrokenRecord) as e:
                    at = records.offset
                    start = _skip_broken(e, path, stream, raw, size, records, members, skips)
    except SpecialFileError as e:
        skips.skip("special_file", str(path), str(e))
    except DecompressionLimitExceeded as e:  # while scanning for the next record
        skips.skip("decompression_limit", f"{path}@{at}", str(e))
    except OSError as e:  # gone, a folder, a disk error: what came before stays
        skips.skip("unreadable", str(path) if at == 0 else f"{path}@{at}", str(e))


def _skip_broken(
    e: Exception, path: Path, stream: BinaryIO, raw: BinaryIO, size: int | None,
    records: _RecordIterator, members: bool, skips: SkipLog,
) -> int | None:  # fmt: skip
    """Record the broken record at `records.offset`; return where the next one starts, or None."""
    failed_at = records.offset
    if isinstance(e, _OversizedHeader):
        # The line ran on to the end of the file: nothing after it can be read.
        at_end, reason = not e.ended, "oversized_header"
    else:
        # warcio read to the end of the file for this record: either the file was cut
        # short, or a wrong Content-Length swallowed records, which the scan finds.
        at_end = (
            size is not None
            and not isinstance(e, zlib.error)
            and raw.tell() >= size
            and records.reader.rem_length() == 0
        )
        reason = "broken_record"
    try:
        start, cut = _resync(stream, failed_at, members), None
    except _Truncated as truncated:  # the scan ran into the cut end of a whole-file gzip
        start, cut = None, truncated
    if reason == "broken_record" and at_end and start is None:
        reason = "truncated_file"
    skips.skip(reason, f"{path}@{failed_at}", str(e).strip() or type(e).__name__)
    if cut is not None or (reason == "oversized_header" and at_end and start is None):
        skips.skip("truncated_file", f"{path}@{failed_at}", str(cut or "the header line runs to the end of the file"))
    return start


def _leftover(raw: BinaryIO, offset: int, size: int) -> bool:
    """Whether more than blank lines follow `offset`, where warcio stopped reading."""
    raw.seek(offset)
    return offset < size and raw.read(_READ_CHUNK).strip() != b""


def _open_archive(raw: BinaryIO, max_decompressed: int) -> tuple[BinaryIO, bool]:
    """The stream to read records from, and whether it is a sequence of gzip members."""
    magic = raw.read(len(_GZIP_MAGIC))
    raw.seek(0)
    if magic != _GZIP_MAGIC:
        return raw, False
    if _one_record_per_member(raw):
        return raw, True
    return _GzipStream(raw, max_decompressed), False


def _one_record_per_member(raw: BinaryIO) -> bool:
    """Whether a gzip file is a sequence of one-record members, as WARC writers make, rather than
    a whole file gzipped as one member, whose positions only make sense decompressed.

    Decides by the first member: it must end within 1 MiB and hold one record. A larger first
    record reads as a whole file: right, but without recovery past a damaged member.
    """
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data, out = raw.read(_SCAN_CHUNK), b""
    try:
        while data and not decompressor.eof and len(out) <= _SCAN_CHUNK:
            out += decompressor.decompress(data, _READ_CHUNK)
            data = decompressor.unconsumed_tail
    except zlib.error:
        return True  # damaged from the start: member by member is how to get past it
    finally:
        raw.seek(0)
    return decompressor.eof and _RECORD_LINE not in out


def _check_header(record: ArcWarcRecord) -> None:
    # warcio reads a record without a numeric Content-Length as empty and then parses its
    # content as the next record's header.
    length = record.rec_headers.get_header("Content-Length")
    if length is None or not length.strip().isdigit():
        raise _BrokenRecord(f"Content-Length is {length!r}")
    if not record.rec_type:
        raise _BrokenRecord("no WARC-Type")


def _read(stream: BinaryIO, max_bytes: int | None) -> bytes:
    """Read `stream` to its end, keeping its first `max_bytes + 1` bytes (none when None)."""
    kept: list[bytes] = []
    room = -1 if max_bytes is None else max_bytes + 1
    while chunk := stream.read(_READ_CHUNK):
        if room > 0:
            kept.append(chunk[:room])
            room -= len(kept[-1])
    return b"".join(kept)


def _resync(raw: BinaryIO, failed_at: int, members: bool) -> int | None:
    """Where the first record after the broken one at `failed_at` begins, or None."""
    if not members:
        # In a whole-file gzip, seeking back to the found record decompresses from the start
        # again: slow, but only once per broken record.
        return next((p + 1 for p in _positions(raw, failed_at, _RECORD_LINE)), None)
    for p in _positions(raw, failed_at + 1, _GZIP_MAGIC):
        if _starts_record(raw, p):
            return p
    return None


def _starts_record(raw: BinaryIO, pos: int) -> bool:
    """Whether a gzip member starting at `pos` holds a WARC record: the magic bytes alone also
    occur by chance inside compressed data."""
    raw.seek(pos)
    try:
        head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw.read(4096), 16)
    except zlib.error:
        return False
    return head.startswith(_RECORD_LINE[1:])


def _positions(raw: BinaryIO, start: int, marker: bytes) -> Iterator[int]:
    """Offsets at or after `start` where `marker` occurs, reading the file a chunk at a time.

    The caller may read the file between two offsets: each chunk is read after a seek.
    """
    buf_start, buf = start, b""
    while True:
        raw.seek(buf_start + len(buf))
        chunk = raw.read(_SCAN_CHUNK)
        if not chunk:
            return
        buf += chunk
        i = buf.find(marker)
        while i >= 0:
            yield buf_start + i
            i = buf.find(marker, i + 1)
        # Keep the tail that could be the start of a marker cut by the chunk boundary.
        keep = min(len(marker) - 1, len(buf))
        buf_start += len(buf) - keep
        buf = buf[len(buf) - keep :]
