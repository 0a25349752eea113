"""Open plain, gzip and zstandard files by their extension, as binary streams, safely.

Input files come from strangers, so opening one never blocks (a FIFO, a device), never reads
the kernel's pseudo-files (/proc, /sys), and decompressing one can be capped: a 1 MB zstandard
file can expand to 30 GB, and must cost a counter, not the machine's memory.
"""

from __future__ import annotations

import errno
import functools
import gzip
import io
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO

import zstandard

# Kernel pseudo-filesystems: their files claim to be regular, yet some block (/proc/kmsg),
# others are endless or leak the state of the machine reading them.
PSEUDO_FILESYSTEMS = ("/proc", "/sys")

# Compressed bytes handed to the zstandard decompressor at a time. A zstandard block of
# 4 bytes can expand to 128 KiB, so this bounds one step's output to 16 MiB whatever the
# file holds (its `decompress` returns all the output of its input at once). Steps are
# taken until about _ZSTD_OUTPUT bytes came out, to keep the Python overhead per byte low.
_ZSTD_STEP = 512
_ZSTD_OUTPUT = 1 << 18
_RAW_CHUNK = 1 << 20


class SpecialFileError(OSError):
    """A path that is not a regular file (FIFO, device, socket), or is one of /proc or /sys."""


class DecompressionLimitExceeded(Exception):
    """A compressed file expands past the cap its reader was given."""


def compression_of(path: str | os.PathLike) -> str | None:
    name = str(path).lower()
    if name.endswith(".gz"):
        return "gzip"
    if name.endswith((".zst", ".zstd")):
        return "zstd"
    return None


def strip_compression_suffix(path: str | os.PathLike) -> str:
    name = Path(path).name
    for suffix in (".gz", ".zst", ".zstd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@functools.cache
def _pseudo_devices() -> frozenset[int]:
    return frozenset(os.stat(p).st_dev for p in PSEUDO_FILESYSTEMS if os.path.isdir(p))


def _special_kind(st: os.stat_result) -> str | None:
    """What a non-regular file is, in words, or None for a regular file."""
    mode = st.st_mode
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))  # fmt: skip
    return next((what for test, what in kinds if test(mode)), None if stat.S_ISREG(mode) else "not a regular file")


def check_regular(path: str | os.PathLike) -> None:
    """Raise `SpecialFileError` unless `path` is a regular file outside /proc and /sys
    (`IsADirectoryError` for a folder, as `open` would).

    Follows symbolic links (callers decide which links to follow) and never opens the file,
    so a FIFO cannot block it.
    """
    _check_stat(path, os.stat(path))
    real = os.path.realpath(path)
    if any(real == p or real.startswith(p + os.sep) for p in PSEUDO_FILESYSTEMS):
        raise SpecialFileError(f"a kernel pseudo-file, not a regular file: {os.fsdecode(path)!r}")


def _check_stat(path: str | os.PathLike, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):  # a folder where a file was listed: gone, as far as its reader goes
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fsdecode(path))
    kind = _special_kind(st)
    if kind is None and st.st_dev in _pseudo_devices():  # /proc mounted elsewhere too
        kind = "a kernel pseudo-file"
    if kind is not None:
        raise SpecialFileError(f"{kind}, not a regular file: {os.fsdecode(path)!r}")


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """`path` opened for binary reading, if it is a regular file (else `SpecialFileError`).

    Checked before opening, so that a socket is named as such, and again on the open file,
    opened without blocking: a file swapped for a FIFO in between is still refused at once.
    """
    check_regular(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        _check_stat(path, os.fstat(fd))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _ZstdReader(io.RawIOBase):
    """Decompresses a (multi-frame) zstandard stream and raises `EOFError` if it is truncated.

    zstandard's own `stream_reader` ends quietly at a cut, which would pass a half-written
    file off as complete; `decompressobj` tells whether the last frame was finished. It is fed
    `_ZSTD_STEP` bytes at a time, so memory stays bounded whatever the compression ratio.
    """

    def __init__(self, raw: BinaryIO, name: str) -> None:
        self._raw = raw
        self._name = name
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._input = memoryview(b"")
        self._output = memoryview(b"")
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._output:
            if not self._input:
                self._input = memoryview(self._raw.read(_RAW_CHUNK))
                if not self._input:
                    if self._in_frame:
                        raise EOFError(f"{self._name}: zstandard data ends before the end of its frame")
                    return 0
            self._output = memoryview(self._decompress_some())
        n = min(len(buffer), len(self._output))
        buffer[:n] = self._output[:n]
        self._output = self._output[n:]
        return n

    def _decompress_some(self) -> bytes:
        """Output of the next steps of input, until about `_ZSTD_OUTPUT` bytes or the end of the input read."""
        out, size = [], 0
        while self._input and size < _ZSTD_OUTPUT:
            data, self._input = self._input[:_ZSTD_STEP], self._input[_ZSTD_STEP:]
            while data:
                self._in_frame = True
                out.append(self._obj.decompress(data))
                size += len(out[-1])
                if not self._obj.eof:
                    break
                # A frame ended; whatever follows belongs to the next frame.
                self._in_frame = False
                data = memoryview(self._obj.unused_data)
                self._obj = self._dctx.decompressobj()
        return b"".join(out)


class DecompressionBudget:
    """What is left of one file's `max_decompressed_bytes`, as its bytes come out."""

    def __init__(self, name: str, max_bytes: int) -> None:
        self.name = name
        self.max_bytes = max_bytes
        self.left = max_bytes

    def spend(self, n: int) -> None:
        """Count `n` more decompressed bytes; raise `DecompressionLimitExceeded` past the cap."""
        self.left -= n
        if self.left < 0:
            raise DecompressionLimitExceeded(
                f"{self.name} expands past max_decompressed_bytes ({self.max_bytes:,} bytes)"
            )


class _Decompressed(io.RawIOBase):
    """A decompressing stream over an open file, which it closes, within an optional budget."""

    def __init__(self, stream: BinaryIO, raw: BinaryIO, budget: DecompressionBudget | None) -> None:
        self._stream = stream
        # A read that stops at damaged data loses what it had gathered: reading what is at
        # hand (readinto1, for gzip) hands the bytes before the damage up first.
        self._readinto = getattr(stream, "readinto1", stream.readinto)
        self._raw = raw
        self._budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._budget is None:
            return self._readinto(buffer)
        left = max(self._budget.left, 0)
        # One byte past the cap tells that the file goes past it; the bytes up to the cap are
        # handed up before the error, so that every line before it is read.
        with memoryview(buffer) as view:
            n = self._readinto(view[: left + 1])
        if n > left > 0:
            self._budget.left = -1  # the next read raises
            return left
        self._budget.spend(n)
        return n

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._raw.close()
            super().close()


def open_binary(path: str | os.PathLike, max_bytes: int | None = None) -> BinaryIO:
    """A readable binary stream of the decompressed content of `path`.

    `path` must be a regular file (else `SpecialFileError`, raised without blocking). A
    truncated or corrupt file raises one of `TRUNCATION_ERRORS` when the reader gets to the
    damaged part, so callers can keep what came before it. With `max_bytes`, a compressed file
    that decompresses to more raises `DecompressionLimitExceeded` once the reader gets there.
    """
    raw = open_regular(path)
    kind = compression_of(path)
    if kind is None:
        return raw
    name = os.fsdecode(path)
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if kind == "gzip" else _ZstdReader(raw, name)
    budget = None if max_bytes is None else DecompressionBudget(name, max_bytes)
    return io.BufferedReader(_Decompressed(stream, raw, budget), buffer_size=_RAW_CHUNK)


# EOFError: the stream stops early; the others: the bytes are damaged.
TRUNCATION_ERRORS = (EOFError, zstandard.ZstdError, gzip.BadGzipFile, zlib.error)
