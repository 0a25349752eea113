"""The dedup blocks' files: records spilled by hash partition, and document ids.

A document is named by its key `shard << 32 | line`, a uint64 whose order is corpus order, so
"the first copy" is simply the smallest key.

The map over shards writes, for each shard, one `.npy` of records sorted by partition and an
index of where each partition starts in it (`.offsets.npy`, written last: it marks the shard
done). The map over partitions then reads its slice of every shard's file through a memory
map. That is P partition files per shard kept in one file, so a corpus of many shards does
not become shards × P small files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tokenmill.atomic import atomic_open, write_text


def doc_keys(shard: int, positions: np.ndarray) -> np.ndarray:
    return (np.uint64(shard) << np.uint64(32)) | positions.astype(np.uint64)


def by_shard(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(shard, mask of `keys` in that shard, their line positions) for each shard among `keys`."""
    shards = keys >> np.uint64(32)
    for s in np.unique(shards):
        mask = shards == s
        yield int(s), mask, (keys[mask] & np.uint64(0xFFFFFFFF)).astype(np.int64)


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array)


def shard_file(folder: Path, shard: int, suffix: str) -> Path:
    return folder / f"shard-{shard:05d}{suffix}"


def write_partitioned(folder: Path, shard: int, records: np.ndarray, part: np.ndarray, partitions: int) -> None:
    """Store one shard's records grouped by partition number `part` (0 <= part < partitions)."""
    order = np.argsort(part, kind="stable")
    offsets = np.searchsorted(part[order], np.arange(partitions + 1))
    save_npy(shard_file(folder, shard, ".npy"), records[order])
    save_npy(shard_file(folder, shard, ".offsets.npy"), offsets)


def shard_done(folder: Path, shard: int) -> bool:
    return shard_file(folder, shard, ".offsets.npy").exists()


def read_partition(folder: Path, shards: int, p: int, dtype: np.dtype) -> np.ndarray:
    """Partition `p` of every shard's records, concatenated."""
    parts = [np.empty(0, dtype)]
    for s in range(shards):
        offsets = np.load(shard_file(folder, s, ".offsets.npy"))
        records = np.load(shard_file(folder, s, ".npy"), mmap_mode="r")
        parts.append(np.asarray(records[offsets[p] : offsets[p + 1]]))
    return np.concatenate(parts)


def write_ids(folder: Path, shard: int, ids: list[str]) -> None:
    write_text(shard_file(folder, shard, ".ids.json"), json.dumps(ids, ensure_ascii=False))


def resolve_ids(folder: Path, keys: np.ndarray) -> list[str]:
    """Document ids of `keys`, reading each shard's id list once."""
    out = np.empty(len(keys), dtype=object)
    for s, mask, positions in by_shard(keys):
        ids = json.loads(shard_file(folder, s, ".ids.json").read_text(encoding="utf-8"))
        out[mask] = [ids[i] for i in positions]
    return out.tolist()
