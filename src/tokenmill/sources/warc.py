"""Web crawl archives: WARC files (HTML responses, main text extracted) and WET files (text).

Records come from `warc_records.records`, which skips broken ones and goes on. A location
is `path@offset`: the record's byte offset in the file, which `warcio extract` and Common
Crawl indexes use too. A whole file gzipped as one member (by `gzip`, not by a WARC writer)
is read as one stream, and its offsets count decompressed bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from warcio.recordloader import ArcWarcRecord

from tokenmill.sources.base import (
    DEFAULT_MAX_DECOMPRESSED_BYTES,
    MaxDecompressedBytes,
    SourceConfig,
    check_text,
    decode_text,
    expand_paths,
    replace_surrogates,
    stat_fingerprint,
)
from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.html import EXTRACTOR_VERSION, extract_page
from tokenmill.sources.warc_records import records

WARC_SUFFIXES = (".warc", ".warc.gz", ".wet", ".wet.gz")
HTML_TYPES = ("text/html", "application/xhtml+xml")

_CHARSET = re.compile(r"""charset\s*=\s*["']?([\w.:-]+)""", re.IGNORECASE)
# Browsers decode these labels as windows-1252 (WHATWG encoding standard), and so do servers'
# pages: a latin-1 header on a page with curly quotes is the common case, not the exception.
_CHARSET_ALIASES = {"iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "us-ascii": "cp1252", "ascii": "cp1252"}

class WarcSource(SourceConfig):
    """WARC and WET files (.warc, .warc.gz, .wet, .wet.gz): one document per page."""

    kind: Literal["warc"] = "warc"
    paths: list[str]
    domain: str = "web"
    max_decompressed_bytes: MaxDecompressedBytes = DEFAULT_MAX_DECOMPRESSED_BYTES

    def files(self) -> list[Path]:
        return expand_paths(self.paths, WARC_SUFFIXES)

    def fingerprint(self) -> str:
        return stat_fingerprint(self.files(), self.model_dump_json(), EXTRACTOR_VERSION)

    def read(self, skips: SkipLog) -> Iterator[Document]:
        for path in self.files():
            name = replace_surrogates(str(path))  # a file name that is not UTF-8 cannot go in a shard
            found = records(path, skips, self.max_doc_bytes, self.max_decompressed_bytes, _wants_payload)
            for offset, record, payload in found:
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
