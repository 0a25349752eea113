"""Open plain, gzip and zstandard files by their extension, as binary streams."""

from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path
from typing import BinaryIO

import zstandard


def compression_of(path: str | os.PathLike) -> str | None:
    name = str(path).lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    return None


class _ZstdReader(io.RawIOBase):
    """Decompresses a (multi-frame) zstandard file and raises `EOFError` if it is truncated.

    zstandard's own `stream_reader` ends quietly at a cut, which would pass a half-written
    file off as complete; `decompressobj` tells whether the last frame was finished.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self._raw = open(path, "rb")
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._pending = b""
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._raw.read(1 << 20)
            if not chunk:
                if self._in_frame:
                    raise EOFError(f"{self._raw.name}: zstandard data ends before the end of its frame")
                return 0
            self._decompress(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _decompress(self, data: bytes) -> None:
        while data:
            self._in_frame = True
            self._pending += self._obj.decompress(data)
            if not self._obj.eof:
                return
            # A frame ended; whatever follows belongs to the next frame.
            self._in_frame = False
            data = self._obj.unused_data
            self._obj = self._dctx.decompressobj()

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_binary(path: str | os.PathLike) -> BinaryIO:
    """A readable binary stream of the decompressed content of `path`.

    A truncated or corrupt file raises one of `TRUNCATION_ERRORS` when the reader gets to
    the damaged part, so callers can keep what came before it.
    """
    kind = compression_of(path)
    if kind == "gzip":
        return gzip.open(path, "rb")
    if kind == "zstd":
        return io.BufferedReader(_ZstdReader(path), buffer_size=1 << 20)
    return open(path, "rb")


# EOFError: the stream stops early; the others: the bytes are damaged.
TRUNCATION_ERRORS = (EOFError, zstandard.ZstdError, gzip.BadGzipFile, zlib.error)


def strip_compression_suffix(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".gz", ".zst", ".zstd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
