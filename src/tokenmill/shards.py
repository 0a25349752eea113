"""Document shards: zstandard-compressed JSONL files, each written atomically.

A shard appears under its final name only once it is complete, so a reader (or a resumed
run) never sees a torn shard; a full disk removes the unfinished shard and names it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import zstandard

from tokenmill.atomic import PendingFile
from tokenmill.compression import open_binary
from tokenmill.sources.document import Document

SHARD_SUFFIX = ".jsonl.zst"


class ShardWriter:
    """Writes documents into `folder/PREFIX-00000.jsonl.zst`, `-00001`, ... of about `shard_bytes` each."""

    def __init__(self, folder: str | os.PathLike, prefix: str = "shard", shard_bytes: int = 64_000_000) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.shard_bytes = shard_bytes
        self.paths: list[Path] = []
        self._part: PendingFile | None = None
        self._stream = None
        self._written = 0

    def write(self, doc: Document) -> None:
        line = json.dumps(doc.to_dict(), ensure_ascii=False).encode("utf-8") + b"\n"
        if self._part is None:
            self._open()
        try:
            with self._part.guard():
                self._stream.write(line)
        except BaseException:
            self._forget()
            raise
        self._written += len(line)
        if self._written >= self.shard_bytes:
            self._close_shard()

    def _open(self) -> None:
        self._part = PendingFile(self.folder / f"{self.prefix}-{len(self.paths):05d}{SHARD_SUFFIX}")
        self._stream = zstandard.ZstdCompressor(level=3).stream_writer(self._part.file, closefd=False)
        self._written = 0

    def _close_shard(self) -> None:
        try:
            with self._part.guard():
                self._stream.close()
            self.paths.append(self._part.commit())
        except BaseException:
            self._part.discard()
            raise
        finally:
            self._part = self._stream = None

    def _forget(self) -> None:
        """Drop the unfinished shard (its compressor may hold bytes the disk refused)."""
        self._part.discard()
        self._part = self._stream = None

    def close(self) -> list[Path]:
        """Finish the open shard; return every shard written, in order."""
        if self._part is not None:
            self._close_shard()
        return self.paths

    def abort(self) -> None:
        if self._part is not None:
            self._forget()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def shard_paths(folder: str | os.PathLike) -> list[Path]:
    return sorted(Path(folder).glob(f"*{SHARD_SUFFIX}"))


def read_shards(paths: Iterable[str | os.PathLike]) -> Iterator[Document]:
    """Documents of the given shards, in order."""
    for path in paths:
        with open_binary(path) as f:
            for line in f:
                if line.strip():
                    yield Document.from_dict(json.loads(line))
