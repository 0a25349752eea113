"""Exact deduplication: of documents whose normalised text is identical, only the first copy stays.

Normalisation makes copies that differ only in presentation count as one text; each step is a
setting, all on by default: Unicode NFC (a composed and a decomposed "é" are the same), lower
case, and whitespace runs collapsed to one space with the ends stripped (re-wrapped or
re-indented copies). The normalised text's UTF-8 is hashed with xxh3-128: a collision among
10^12 documents has a probability near 10^-15, so equal hashes are taken as equal texts.

fit runs in three steps, so no process ever holds every hash:
1. a map over shards hashes each document and spills (hash, key) records partitioned by hash;
2. a map over partitions sorts its records; in each run of equal hashes every record after the
   first is a duplicate of the first, which has the smallest key: the first in corpus order;
3. the ids of the duplicates and of their kept copies are resolved into `drop.json`.
Documents are recognised again in `apply` by id, which stage 01 makes unique.
"""

from __future__ import annotations

import time
import unicodedata
from pathlib import Path
from typing import ClassVar

import numpy as np
import xxhash
from pydantic import Field

from tokenmill.atomic import write_json
from tokenmill.curate.block import FitContext
from tokenmill.curate.dedup.drop import DropListBlock, write_drop
from tokenmill.curate.dedup.spill import (
    doc_keys,
    read_partition,
    resolve_ids,
    save_npy,
    shard_done,
    shard_file,
    write_ids,
    write_partitioned,
)
from tokenmill.curate.workdir import DONE, open_workdir, shards_fingerprint
from tokenmill.shards import read_shards

HASH_RECORD = np.dtype([("hi", "<u8"), ("lo", "<u8"), ("doc", "<u8")])
DUPLICATE = np.dtype([("doc", "<u8"), ("kept", "<u8")])


class ExactDedup(DropListBlock):
    """Removes every copy but the first of documents with the same normalised text."""

    name: ClassVar[str] = "exact_dedup"

    nfc: bool = Field(True, description="Compose Unicode (NFC) before hashing.")
    lowercase: bool = Field(True, description="Lower-case before hashing.")
    collapse_whitespace: bool = Field(True, description="Collapse whitespace runs to one space and strip the ends.")
    partitions: int = Field(64, ge=1, le=65536, description="Hash partitions: the unit of work of the grouping step.")

    def normalize(self, text: str) -> str:
        if self.nfc:
            text = unicodedata.normalize("NFC", text)
        if self.lowercase:
            text = text.lower()
        if self.collapse_whitespace:
            text = " ".join(text.split())
        return text

    def fit(self, ctx: FitContext) -> None:
        fingerprint = {"block": self.model_dump(), "shards": shards_fingerprint(ctx.shards)}
        if open_workdir(ctx.workdir, fingerprint):
            return
        start = time.perf_counter()
        hashes, duplicates = ctx.workdir / "hashes", ctx.workdir / "duplicates"
        hashes.mkdir(exist_ok=True)
        duplicates.mkdir(exist_ok=True)
        hashed = ctx.executor.map(_hash_shard, [(self, path, i, hashes) for i, path in enumerate(ctx.shards)])
        parts = [(hashes, len(ctx.shards), p, duplicates) for p in range(self.partitions)]
        found = ctx.executor.map(_find_duplicates, parts)

        pairs = np.concatenate([np.load(duplicates / f"part-{p:05d}.npy") for p in range(self.partitions)])
        pairs = pairs[np.argsort(pairs["doc"])]
        drop = dict(zip(resolve_ids(hashes, pairs["doc"]), resolve_ids(hashes, pairs["kept"])))
        write_drop(ctx.workdir, drop)
        summary = {
            "documents": int(sum(hashed)),
            "duplicates": int(sum(found)),
            "texts_with_copies": int(len(np.unique(pairs["kept"]))),
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_json(ctx.workdir / DONE, summary)

    def removal(self, kept: str) -> tuple[str, str]:
        return "exact_dedup.duplicate", kept


def _hash_shard(task: tuple[ExactDedup, Path, int, Path]) -> int:
    """Hash one shard's documents; spill (hash, key) records by partition. Returns how many."""
    block, path, shard, folder = task
    if shard_done(folder, shard):
        return len(np.load(shard_file(folder, shard, ".npy"), mmap_mode="r"))
    ids, hi, lo, positions = [], [], [], []
    for position, doc in enumerate(read_shards([path])):
        ids.append(doc.id)
        if not block.applies_to(doc):
            continue
        # surrogatepass: a lone surrogate (legal in JSON) must not stop the run; it hashes as itself.
        h = xxhash.xxh3_128_intdigest(block.normalize(doc.text).encode("utf-8", "surrogatepass"))
        hi.append(h >> 64)
        lo.append(h & 0xFFFF_FFFF_FFFF_FFFF)
        positions.append(position)
    records = np.empty(len(positions), HASH_RECORD)
    records["hi"] = np.array(hi, dtype=np.uint64)
    records["lo"] = np.array(lo, dtype=np.uint64)
    records["doc"] = doc_keys(shard, np.array(positions, dtype=np.uint64))
    write_ids(folder, shard, ids)
    write_partitioned(folder, shard, records, records["hi"] % np.uint64(block.partitions), block.partitions)
    return len(records)


def _find_duplicates(task: tuple[Path, int, int, Path]) -> int:
    """Group one partition's records by hash; save (duplicate, kept copy) key pairs. Returns how many."""
    folder, shards, p, out = task
    path = out / f"part-{p:05d}.npy"
    if path.exists():
        return len(np.load(path, mmap_mode="r"))
    records = read_partition(folder, shards, p, HASH_RECORD)
    records = records[np.lexsort((records["doc"], records["lo"], records["hi"]))]
    first = np.ones(len(records), dtype=bool)
    first[1:] = (records["hi"][1:] != records["hi"][:-1]) | (records["lo"][1:] != records["lo"][:-1])
    # Index of each record's group head: the last `first` at or before it.
    head = np.maximum.accumulate(np.where(first, np.arange(len(records)), 0))
    pairs = np.empty(int((~first).sum()), DUPLICATE)
    pairs["doc"] = records["doc"][~first]
    pairs["kept"] = records["doc"][head[~first]]
    save_npy(path, pairs)
    return len(pairs)
