"""What every source shares: its config fields, path expansion, decoding and fingerprints.

A source is a pydantic model (its `kind` selects it in a config) with two methods:
`read(skips)` yields its `Document`s and records every unreadable unit in `skips`, and
`fingerprint()` returns a string that changes whenever the input would read differently,
so that a run can tell whether stage 01 must run again. Callers take `documents(skips)`:
what `read` yields, up to the source's `limit`.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
from abc import abstractmethod
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Annotated

import xxhash
from pydantic import BaseModel, ConfigDict, Field

from tokenmill.errors import TokenmillError
from tokenmill.sources.document import Document, SkipLog

_SURROGATE = re.compile("[\ud800-\udfff]")

# A document above this size is almost always a dump, a log or a data file, not prose.
DEFAULT_MAX_DOC_BYTES = 10_000_000
# Decompressed size at which a .gz or .zst file is read no further: above any real WARC or
# JSONL shard of the common crawls (~5 GB), far below what a decompression bomb expands to.
DEFAULT_MAX_DECOMPRESSED_BYTES = 8_000_000_000

MaxDecompressedBytes = Annotated[
    int,
    Field(
        gt=0,
        description="A .gz or .zst file that expands past this many bytes is read no further "
        "(a decompression bomb): the rest of it is skipped as 'decompression_limit'.",
    ),
]


class SourceConfig(BaseModel):
    """Fields every source has. Subclasses add `kind: Literal[...]` and their own fields."""

    model_config = ConfigDict(extra="forbid")

    domain: str = Field("web", description="Domain tag for the mixture (web, wiki, books, code, ...).")
    max_doc_bytes: int = Field(DEFAULT_MAX_DOC_BYTES, gt=0, description="Larger documents are skipped.")
    limit: int | None = Field(None, gt=0, description="Stop after this many documents.")

    def documents(self, skips: SkipLog) -> Iterator[Document]:
        # islice asks for no document past the limit, so reading stops there.
        return islice(self.read(skips), self.limit)

    @abstractmethod
    def read(self, skips: SkipLog) -> Iterator[Document]:
        ...

    @abstractmethod
    def fingerprint(self) -> str:
        ...

    def describe(self) -> str:
        """A short human name for progress lines and stats."""
        return getattr(self, "kind", type(self).__name__)


def expand_paths(patterns: list[str], suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """Files named by paths, directories (walked) and glob patterns, sorted, without repeats.

    A pattern that matches nothing is an error naming it: a typo must not read as an empty corpus.
    """
    found: list[Path] = []
    for pattern in patterns:
        matches = glob_paths(os.path.expanduser(pattern))
        if not matches:
            raise TokenmillError(f"input not found: {pattern}")
        for m in matches:
            p = Path(m)
            if p.is_dir():
                found.extend(
                    f for f in sorted(p.rglob("*")) if f.is_file() and (suffixes is None or f.name.lower().endswith(suffixes))
                )
            else:
                found.append(p)
    seen: set[Path] = set()
    unique = []
    for p in found:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


def fixed_prefix(pattern: str) -> str:
    """The folder a glob pattern starts from: its leading parts without wildcards."""
    parts = Path(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts[:-1]))
    return os.path.join(*fixed) if fixed else "."


def glob_paths(pattern: str) -> list[str]:
    """The paths `pattern` matches, sorted; `**` spans folders.

    Unlike glob.glob(recursive=True), `**` does not descend into linked folders: a link to `.` or
    `..` would make the listing endless. As glob does, hidden names (a leading dot) are left out
    unless the pattern names one.
    """
    if not glob.has_magic(pattern):
        return [pattern] if os.path.lexists(pattern) else []
    root = fixed_prefix(pattern)
    rest = Path(os.path.relpath(pattern, root))
    dotted = any(part.startswith(".") and part not in (".", "..") for part in rest.parts)
    matches = []
    for path in Path(root).glob(rest.as_posix()):
        below = path.relative_to(root).parts
        if dotted or not any(name.startswith(".") for name in below):
            matches.append(os.path.join(root, *below) if root != "." else os.path.join(*below))
    return sorted(matches)


def stat_fingerprint(paths: list[Path], *extra: str) -> str:
    """Hash of each file's path, size and modification time (as make does), plus `extra` strings.

    A file that is gone or cannot be looked at since it was listed (a package manager renames
    its files while a run lists /usr/share) counts by its error: reading it records the skip.
    """
    h = xxhash.xxh3_64()
    for p in paths:
        try:
            st = p.stat()
        except OSError as e:
            h.update(os.fsencode(p) + f"\0error {e.errno}\n".encode())
            continue
        h.update(os.fsencode(p) + f"\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()


def within(path: str, real_root: str) -> bool:
    """Whether the real path `path` is `real_root` or below it (both as `os.path.realpath` gives them)."""
    return os.path.commonpath([path, real_root]) == real_root


def replace_surrogates(s: str) -> str:
    """`s` with lone surrogates (JSON may carry "\\ud800") replaced by U+FFFD: UTF-8 cannot hold them."""
    return _SURROGATE.sub("\ufffd", s)


def looks_binary(raw: bytes) -> bool:
    """A NUL byte in the first 8 KiB is how git and grep tell binary from text."""
    return b"\0" in raw[:8192]


def decode_text(raw: bytes, skips: SkipLog, location: str, max_bytes: int) -> str | None:
    """Bytes to text, or None when the input must be skipped (recorded in `skips` with its reason).

    Invalid UTF-8 is replaced with U+FFFD and counted as a repair: the rest of the text is kept.
    """
    if len(raw) > max_bytes:
        skips.skip("too_large", location, f"{len(raw):,} bytes > max_doc_bytes {max_bytes:,}")
        return None
    if looks_binary(raw):
        skips.skip("binary", location)
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        text = raw.decode("utf-8", errors="replace")
        skips.repair("invalid_utf8", location, f"first bad byte at offset {e.start}")
    text = text.removeprefix("\ufeff")
    if not text.strip():
        skips.skip("empty", location)
        return None
    return text


def check_text(text: str, skips: SkipLog, location: str, max_bytes: int) -> str | None:
    """The same checks as `decode_text` for text that arrives already decoded (JSON, Parquet).

    JSON may carry lone surrogates ("\\ud800"), which no UTF-8 file can hold: they are replaced
    with U+FFFD and counted as a repair.
    """
    if len(text) > max_bytes:  # cheap lower bound on the UTF-8 size
        skips.skip("too_large", location, f"{len(text):,} chars > max_doc_bytes {max_bytes:,}")
        return None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        text = replace_surrogates(text)
        skips.repair("invalid_utf8", location, "lone surrogate replaced")
        size = len(text.encode("utf-8"))
    if size > max_bytes:
        skips.skip("too_large", location, f"{size:,} bytes > max_doc_bytes {max_bytes:,}")
        return None
    if "\0" in text:
        skips.skip("binary", location)
        return None
    if not text.strip():
        skips.skip("empty", location)
        return None
    return text
