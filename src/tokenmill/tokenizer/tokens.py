"""Token shards: flat arrays of token ids with a header and a document index, memory-mapped for training.

One file per shard, `{split}-{n:05d}.bin`, all integers little-endian:

    offset   size                 field
    0        8                    magic b"TMTOKENS"
    8        4                    format version, uint32 (1)
    12       4                    bytes per token, uint32: 2 (uint16) or 4 (uint32)
    16       8                    n_tokens, uint64
    24       8                    n_docs, uint64
    32       n_tokens * size      the tokens; each document is BOS ... EOS
             0-7                  zero padding to a multiple of 8 bytes
             (n_docs + 1) * 8     document index, uint64: the token offset where each document
                                  starts, then n_tokens

A shard is written under a temporary name and renamed when complete, so a reader never sees a
torn one; a full disk removes the unfinished shard and names it.
"""

from __future__ import annotations

import os
import struct
from array import array
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tokenmill.atomic import PendingFile
from tokenmill.errors import TokenmillError

MAGIC = b"TMTOKENS"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")
SUFFIX = ".bin"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(vocab_size: int, choice: str = "auto") -> np.dtype:
    if choice == "auto":
        choice = "uint16" if vocab_size <= 2**16 else "uint32"
    if choice == "uint16" and vocab_size > 2**16:
        raise TokenmillError(f"dtype uint16 cannot hold the ids of a vocabulary of {vocab_size:,}; use uint32 or auto")
    return DTYPES[choice]


def _index_offset(n_tokens: int, itemsize: int) -> int:
    return HEADER.size + -(-n_tokens * itemsize // 8) * 8


class TokenShardWriter:
    """Writes documents into `folder/PREFIX-00000.bin`, `-00001`, ... of about `shard_tokens` each.

    A document never spans two shards; one longer than `shard_tokens` gets a shard of its own.
    """

    def __init__(self, folder: str | os.PathLike, prefix: str, dtype: np.dtype, shard_tokens: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.dtype = np.dtype(dtype)
        self.shard_tokens = shard_tokens
        self.paths: list[Path] = []
        self._part: PendingFile | None = None
        self._offsets = array("Q")

    def write(self, tokens: np.ndarray, lengths: np.ndarray) -> None:
        """Append documents: `tokens` is their ids one after another, `lengths` the size of each."""
        tokens = np.ascontiguousarray(tokens, dtype=self.dtype)
        ends = np.cumsum(lengths, dtype=np.int64)
        done, written = 0, 0
        while done < len(lengths):
            if self._part is None:
                self._open()
            room = self.shard_tokens - self._offsets[-1]
            fit = int(np.searchsorted(ends[done:] - written, room, side="right"))
            if fit == 0:
                if len(self._offsets) > 1:
                    self._close_shard()
                    continue
                fit = 1
            stop = int(ends[done + fit - 1])
            self._write(tokens[written:stop].tobytes())
            base = self._offsets[-1] - written
            self._offsets.extend(int(e) + base for e in ends[done : done + fit])
            done, written = done + fit, stop

    def _write(self, data: bytes) -> None:
        try:
            with self._part.guard():
                self._part.file.write(data)
        except BaseException:
            self.abort()
            raise

    def _open(self) -> None:
        self._part = PendingFile(self.folder / f"{self.prefix}-{len(self.paths):05d}{SUFFIX}")
        self._offsets = array("Q", [0])
        self._write(bytes(HEADER.size))  # filled in when the shard is complete

    def _close_shard(self) -> None:
        n_tokens, n_docs = self._offsets[-1], len(self._offsets) - 1
        f = self._part.file
        self._write(bytes(_index_offset(n_tokens, self.dtype.itemsize) - f.tell()))
        self._write(np.asarray(self._offsets, dtype="<u8").tobytes())
        f.seek(0)
        self._write(HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, n_tokens, n_docs))
        try:
            self.paths.append(self._part.commit())
        except BaseException:
            self._part.discard()
            raise
        finally:
            self._part = None

    def close(self) -> list[Path]:
        """Finish the open shard; return every shard written, in order."""
        if self._part is not None:
            self._close_shard()
        return self.paths

    def abort(self) -> None:
        if self._part is not None:
            self._part.discard()
            self._part = None


@dataclass
class TokenShard:
    path: Path
    tokens: np.ndarray  # memory-mapped, read-only
    offsets: np.ndarray  # n_docs + 1 token offsets

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    def document(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def open_token_shard(path: str | os.PathLike) -> TokenShard:
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size or head[:8] != MAGIC:
        raise TokenmillError(f"{path} is not a tokenmill token shard (no {MAGIC.decode()} header)")
    _, version, itemsize, n_tokens, n_docs = HEADER.unpack(head)
    if version != VERSION:
        raise TokenmillError(f"{path} is token shard version {version}; this tokenmill reads version {VERSION}")
    if itemsize not in (2, 4):
        raise TokenmillError(f"{path}: {itemsize} bytes per token is not a known dtype")
    index = _index_offset(n_tokens, itemsize)
    expected = index + 8 * (n_docs + 1)
    if path.stat().st_size != expected:
        raise TokenmillError(f"{path} is {path.stat().st_size:,} bytes, its header says {expected:,}: truncated or damaged")
    dtype = DTYPES["uint16" if itemsize == 2 else "uint32"]
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=HEADER.size, shape=(n_tokens,))
    offsets = np.memmap(path, dtype="<u8", mode="r", offset=index, shape=(n_docs + 1,))
    return TokenShard(path, tokens, offsets)


def token_shard_paths(folder: str | os.PathLike, split: str) -> list[Path]:
    return sorted(Path(folder).glob(f"{split}-*{SUFFIX}"))
