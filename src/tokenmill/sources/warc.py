"""Web crawl archives: WARC files (HTML responses, main text extracted) and WET files (text).

Records are read with warcio from a seekable file, one at a time, so a multi-GB archive costs
the memory of its largest record. warcio stops at the first malformed record; this reader
instead skips it, finds the start of the next record (the next `WARC/1.` line, or in a
per-record gzip file the next gzip member) and goes on from there.

A location is `path@offset`: the record's byte offset in the file, which `warcio extract` and
Common Crawl indexes use too. A whole file gzipped as one member (by `gzip`, not by a WARC
writer) is read as one stream, and its offsets count decompressed bytes.
"""

from __future__ import annotations

import gzip
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Literal

from warcio.archiveiterator import ArchiveIterator
from warcio.bufferedreaders import DecompressingBufferedReader
from warcio.exceptions import ArchiveLoadFailed
from warcio.recordloader import ArcWarcRecord, ArcWarcRecordLoader
from warcio.statusandheaders import StatusAndHeaders, StatusAndHeadersParserException

from tokenmill.sources.base import (
    SourceConfig,
    check_text,
    decode_text,
    expand_paths,
    replace_surrogates,
    stat_fingerprint,
)
from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.html import EXTRACTOR_VERSION, extract_page

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
HTML_TYPES = ("text/html", "application/xhtml+xml")

_GZIP_MAGIC = b"\x1f\x8b\x08"  # gzip member header: magic bytes and the deflate method
_RECORD_LINE = b"\nWARC/1."  # the first line of a record, with the line end before it
_SCAN_CHUNK = 1 << 20
_READ_CHUNK = 1 << 16
_CHARSET = re.compile(r"""charset\s*=\s*["']?([\w.:-]+)""", re.IGNORECASE)
# Browsers decode these labels as windows-1252 (WHATWG encoding standard), and so do servers'
# pages: a latin-1 header on a page with curly quotes is the common case, not the exception.
_CHARSET_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252"}
# Errors warcio raises on a record it cannot parse; zlib's on a damaged gzip member.
_PARSE_ERRORS = (ArchiveLoadFailed, StatusAndHeadersParserException, zlib.error)


class _BrokenRecord(Exception):
    """A record whose header is unusable, or whose bytes end before its Content-Length."""


class _Truncated(Exception):
    """A whole-file gzip ends before its gzip stream does."""


class _GzipStream(gzip.GzipFile):
    """A whole-file gzip, read as warcio reads a raw stream, whose cut-short end raises
    `_Truncated`: warcio takes EOFError, which gzip raises there, for the normal end of the file."""

    def read(self, size: int | None = -1) -> bytes:
        # One chunk at a time (fewer bytes than asked for is fine for warcio): a full read would
        # lose the chunks it had gathered when the next one raises EOFError.
        try:
            return self.read1(-1 if size is None else size)
        except EOFError as e:
            raise _Truncated(str(e)) from e


class _StrictReader(DecompressingBufferedReader):
    """warcio's reader, except that damaged gzip data raises instead of reading as empty.

    warcio prints the zlib error and returns no data, which would cut the record short and
    make every later block of the file fail the same way.
    """

    def _decompress(self, data: bytes) -> bytes:
        if self.decompressor is None or not data:
            return data
        return self.decompressor.decompress(data)


class _Loader(ArcWarcRecordLoader):
    """warcio's record parser, except that a missing WARC-Target-URI is an error, not a crash."""

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

    def __init__(self, fileobj: BinaryIO, members: bool) -> None:
        super().__init__(fileobj)
        self.reader = _StrictReader(self.fh, decomp_type="gzip" if members else None)
        self.loader = _Loader(verify_http=False, arc2warc=False)
        # Never guess ARC: a garbage line can split into the five fields of an ARC header.
        self.known_format = "warc"


class WarcSource(SourceConfig):
    """WARC and WET files (.warc, .warc.gz, .wet, .wet.gz): one document per page."""

    kind: Literal["warc"] = "warc"
    paths: list[str]
    domain: str = "web"

    def files(self) -> list[Path]:
        return expand_paths(self.paths, WARC_SUFFIXES)

    def fingerprint(self) -> str:
        return stat_fingerprint(self.files(), self.model_dump_json(), EXTRACTOR_VERSION)

    def read(self, skips: SkipLog) -> Iterator[Document]:
        for path in self.files():
            name = replace_surrogates(str(path))  # a file name that is not UTF-8 cannot go in a shard
            for offset, record, payload in _records(path, skips, self.max_doc_bytes):
                doc = self._document(f"{name}@{offset}", f"{name}#{offset}", record, payload, skips)
                if doc is not None:
                    yield doc

    def _document(
        self, location: str, fallback_id: str, record: ArcWarcRecord, payload: bytes | None, skips: SkipLog
    ) -> Document | None:
        headers = record.rec_headers
        if record.rec_type == "conversion":
            text = decode_text(payload or b"", skips, location, self.max_doc_bytes)
            if text is None:
                return None
            fmt, title = "wet", None
        elif record.rec_type == "response":
            reason = _unwanted_response(record)
            if reason:
                skips.skip(reason[0], location, reason[1])
                return None
            page_url = headers.get_header("WARC-Target-URI")
            html = _decode_html(payload or b"", _charset(record), skips, location, self.max_doc_bytes)
            if html is None:
                return None
            page = extract_page(html, page_url)
            if page is None:
                skips.skip("no_main_text", location)
                return None
            text, fmt, title = page.text, "html", page.title
        else:  # request, metadata, warcinfo, revisit, resource: nothing to read
            return None
        record_id = (headers.get_header("WARC-Record-ID") or "").strip("<> ")
        meta = {
            "location": location,
            "url": headers.get_header("WARC-Target-URI"),
            "date": headers.get_header("WARC-Date"),
            "format": fmt,
        }
        if title:
            meta["title"] = title
        return Document(id=record_id or fallback_id, text=text, source=self.domain, meta=meta)


def _records(path: Path, skips: SkipLog, max_bytes: int) -> Iterator[tuple[int, ArcWarcRecord, bytes | None]]:
    """(offset, record, payload) for each readable record of `path`, skipping broken ones.

    The payload (at most `max_bytes + 1` bytes, HTTP transfer and content encodings undone)
    is read only for records that can become documents; every record is read to its end here,
    so that a record cut short is found before it becomes a document.
    """
    with open(path, "rb") as raw:
        stream, members = _open_archive(raw)
        # Only a file read as it is on disk can tell that warcio ran into its end.
        size = os.fstat(raw.fileno()).st_size if stream is raw else None
        start: int | None = 0
        while start is not None:
            stream.seek(start)
            records = _RecordIterator(stream, members)
            try:
                for record in records:
                    _check_header(record)
                    payload = _read(record.content_stream(), max_bytes) if _wants_payload(record) else None
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
            except (*_PARSE_ERRORS, _BrokenRecord) as e:
                # warcio read to the end of the file for this record: either the file was cut
                # short, or a wrong Content-Length swallowed records, which the scan finds.
                at_end = (
                    size is not None
                    and not isinstance(e, zlib.error)
                    and raw.tell() >= size
                    and records.reader.rem_length() == 0
                )
                failed_at = records.offset
                try:
                    start, cut = _resync(stream, failed_at, members), None
                except _Truncated as truncated:  # the scan ran into the cut end of a whole-file gzip
                    start, cut = None, truncated
                reason = "truncated_file" if at_end and start is None else "broken_record"
                skips.skip(reason, f"{path}@{failed_at}", str(e).strip() or type(e).__name__)
                if cut is not None:
                    skips.skip("truncated_file", f"{path}@{failed_at}", str(cut))


def _leftover(raw: BinaryIO, offset: int, size: int) -> bool:
    """Whether more than blank lines follow `offset`, where warcio stopped reading."""
    raw.seek(offset)
    return offset < size and raw.read(_READ_CHUNK).strip() != b""


def _open_archive(raw: BinaryIO) -> tuple[BinaryIO, bool]:
    """The stream to read records from, and whether it is a sequence of gzip members."""
    magic = raw.read(len(_GZIP_MAGIC))
    raw.seek(0)
    if magic != _GZIP_MAGIC:
        return raw, False
    if _one_record_per_member(raw):
        return raw, True
    return _GzipStream(fileobj=raw, mode="rb"), False


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


def _wants_payload(record: ArcWarcRecord) -> bool:
    return record.rec_type == "conversion" or (record.rec_type == "response" and _unwanted_response(record) is None)


def _unwanted_response(record: ArcWarcRecord) -> tuple[str, str] | None:
    """(reason, detail) when a response record is not an HTML page to extract, else None."""
    http = record.http_headers
    if http is None:  # dns:, whois: and other non-HTTP captures
        return "not_html", f"{record.rec_headers.get_header('WARC-Target-URI')} has no HTTP headers"
    status = http.get_statuscode()
    if status != "200":
        return "http_status", status
    mime = _mime(record)
    if mime and mime not in HTML_TYPES:
        return "not_html", mime
    return None


def _mime(record: ArcWarcRecord) -> str:
    # Common Crawl's own detection is more reliable than what servers declare, when it is there.
    declared = record.rec_headers.get_header("WARC-Identified-Payload-Type") or record.http_headers.get_header(
        "Content-Type"
    )
    return (declared or "").split(";")[0].strip().lower()


def _charset(record: ArcWarcRecord) -> str | None:
    match = _CHARSET.search(record.http_headers.get_header("Content-Type") or "")
    return match.group(1).lower() if match else None


def _decode_html(raw: bytes, charset: str | None, skips: SkipLog, location: str, max_bytes: int) -> str | None:
    """The page's text by its declared charset, else as UTF-8; None when it must be skipped."""
    codec = _CHARSET_ALIASES.get(charset, charset) if charset else None
    if codec is None or codec.replace("_", "-") in ("utf-8", "utf8"):
        return decode_text(raw, skips, location, max_bytes)
    if len(raw) > max_bytes:
        skips.skip("too_large", location, f"{len(raw):,} bytes > max_doc_bytes {max_bytes:,}")
        return None
    try:
        text = raw.decode(codec)
    except LookupError:  # a charset Python does not know: UTF-8 is the best guess
        return decode_text(raw, skips, location, max_bytes)
    except UnicodeDecodeError as e:
        text = raw.decode(codec, errors="replace")
        skips.repair("invalid_charset", location, f"not valid {charset} at offset {e.start}")
    return check_text(text, skips, location, max_bytes)


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
