"""Near-duplicate removal with MinHash LSH, as in datatrove and NeMo Curator.

Shingles. The text is lower-cased and cut into words at every non-word character, which
strips punctuation and collapses whitespace in one step; a shingle is n consecutive words
(default 5) joined by a space. A text of fewer than n words is one shingle.

MinHash. Each shingle is hashed once to 64 bits with xxh3; permutation i maps a hash x to
h_i(x) = (a_i * x + b_i) mod 2^64 with a_i odd, and the signature keeps min_x h_i(x) >> 32.
This is multiply-add-shift hashing (Dietzfelbinger): it replaces datasketch's
(a*x + b) mod (2^61 - 1) because a 64-bit multiply wraps for free in numpy while a modulo is
its slowest integer operation; since x is already a uniform 64-bit hash, the estimates are as
good (the tests compare them with datasketch's over many pairs). The shift commutes with the
minimum, so it is applied once per signature value, not per shingle. A batch of documents is
computed as one (permutations x shingles) matrix reduced per document with
`np.minimum.reduceat`. a and b come from the run's seed.

Dedup. fit (1) signs every shard in parallel, saving each shard's signatures and spilling its
band keys partitioned by key; (2) per partition, documents sharing a band key become candidate
pairs, which by default are verified: kept only when the signatures' estimated Jaccard
similarity reaches the threshold; (3) the verified pairs, few next to the documents, are
joined into clusters by union-find, and all but each cluster's first document (in corpus
order) are dropped. Signatures are read back only for the documents in candidate pairs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import xxhash
from pydantic import Field

from tokenmill.atomic import write_json, write_text
from tokenmill.curate.block import FitContext
from tokenmill.curate.dedup.drop import DropListBlock, write_drop
from tokenmill.curate.dedup.lsh import BAND_RECORD, band_keys, candidate_pairs, estimated_jaccard, optimal_param
from tokenmill.curate.dedup.spill import (
    by_shard,
    doc_keys,
    read_partition,
    resolve_ids,
    save_npy,
    shard_done,
    shard_file,
    write_ids,
    write_partitioned,
)
from tokenmill.curate.dedup.unionfind import components
from tokenmill.curate.workdir import DONE, open_workdir, shards_fingerprint
from tokenmill.figures import bar_chart
from tokenmill.shards import read_shards

WORD = re.compile(r"\w+")
EMPTY = np.uint32(0xFFFF_FFFF)  # the signature value of a document without shingles
CHUNK = 8192  # shingles per matrix: (128 permutations x 8192) uint64 = 8 MB, near the cache
VERIFY_WINDOW = 32  # see lsh.candidate_pairs


def shingles(text: str, n: int) -> list[str]:
    words = WORD.findall(text.lower())
    if len(words) <= n:
        return [" ".join(words)] if words else []
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def hash_shingles(strings: list[str]) -> np.ndarray:
    h = xxhash.xxh3_64_intdigest
    return np.fromiter((h(s.encode("utf-8", "surrogatepass")) for s in strings), dtype=np.uint64, count=len(strings))


def shingle_hashes(text: str, n: int) -> np.ndarray:
    """The same as `hash_shingles(shingles(text, n))`, faster: each shingle is a slice of the
    text's words joined and encoded once, instead of a join and an encoding of its own."""
    words = WORD.findall(text.lower())
    if len(words) <= n:
        return hash_shingles(shingles(text, n))
    joined = " ".join(words).encode("utf-8", "surrogatepass")
    spaces = np.flatnonzero(np.frombuffer(joined, dtype=np.uint8) == ord(" ")).tolist()
    starts, ends = [0, *(i + 1 for i in spaces)], [*spaces, len(joined)]
    h = xxhash.xxh3_64_intdigest
    count = len(words) - n + 1
    return np.fromiter((h(joined[s:e]) for s, e in zip(starts[:count], ends[n - 1 :])), dtype=np.uint64, count=count)


class MinHasher:
    """MinHash signatures of `num_perm` permutations, determined by `seed`."""

    def __init__(self, num_perm: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.a = rng.integers(0, 2**64, num_perm, dtype=np.uint64) | np.uint64(1)
        self.b = rng.integers(0, 2**64, num_perm, dtype=np.uint64)

    def signatures(self, hashes: list[np.ndarray]) -> np.ndarray:
        """(len(hashes), num_perm) uint32 signatures of documents given as arrays of shingle hashes."""
        k = len(self.a)
        lengths = np.array([len(h) for h in hashes], dtype=np.int64)
        out = np.full((len(hashes), k), np.iinfo(np.uint64).max, dtype=np.uint64)
        buffer = np.empty(k * CHUNK, dtype=np.uint64)
        i = 0
        while i < len(hashes):
            # The next documents whose shingles fit in one chunk (at least one document).
            j, total = i + 1, lengths[i]
            while j < len(hashes) and total + lengths[j] <= CHUNK:
                total += lengths[j]
                j += 1
            x = np.concatenate(hashes[i:j])
            for lo in range(0, len(x), CHUNK):  # more than once only for one document over CHUNK
                xs = x[lo : lo + CHUNK]
                m = buffer[: k * len(xs)].reshape(k, len(xs))
                np.multiply(self.a[:, None], xs[None, :], out=m)  # wraps mod 2^64
                m += self.b[:, None]
                if j - i == 1:
                    np.minimum(out[i], m.min(axis=1), out=out[i])
                else:
                    docs = i + np.flatnonzero(lengths[i:j])  # reduceat would give empty documents a value
                    starts = np.concatenate([[0], np.cumsum(lengths[docs[:-1]])])
                    out[docs] = np.minimum.reduceat(m, starts, axis=1).T
            i = j
        return (out >> np.uint64(32)).astype(np.uint32)


class FuzzyDedup(DropListBlock):
    """Removes near-duplicates: clusters of documents linked by MinHash-estimated Jaccard >= threshold."""

    name: ClassVar[str] = "fuzzy_dedup"

    ngram: int = Field(5, ge=1, description="Words per shingle.")
    num_perm: int = Field(128, ge=2, le=1024, description="MinHash permutations (signature length).")
    threshold: float = Field(0.8, gt=0, lt=1, description="Shingle-set Jaccard similarity that makes near-duplicates.")
    false_positive_weight: float = Field(0.1, ge=0, description="Weight of false positives when choosing bands x rows.")
    false_negative_weight: float = Field(
        0.9, ge=0, description="Weight of false negatives; high because verification removes the false positives."
    )
    verify: bool = Field(True, description="Keep a candidate pair only if its estimated Jaccard reaches the threshold.")
    partitions: int = Field(64, ge=1, le=65536, description="Band-key partitions: the unit of work of bucketing.")

    def bands_rows(self) -> tuple[int, int]:
        return optimal_param(self.threshold, self.num_perm, self.false_positive_weight, self.false_negative_weight)

    def fit(self, ctx: FitContext) -> None:
        fingerprint = {"block": self.model_dump(), "seed": ctx.seed, "shards": shards_fingerprint(ctx.shards)}
        if open_workdir(ctx.workdir, fingerprint):
            return
        start = time.perf_counter()
        signed, edges = ctx.workdir / "shards", ctx.workdir / "edges"
        signed.mkdir(exist_ok=True)
        edges.mkdir(exist_ok=True)
        shards = [(self, path, i, signed, ctx.seed) for i, path in enumerate(ctx.shards)]
        counts = ctx.executor.map(_sign_shard, shards)
        partitions = [(self, signed, len(ctx.shards), p, edges) for p in range(self.partitions)]
        found = ctx.executor.map(_bucket_partition, partitions)

        # A pair that shares keys in bands of different partitions was found once in each.
        pairs = np.unique(np.concatenate([np.load(edges / f"part-{p:05d}.npy") for p in range(self.partitions)]))
        nodes, first = components(pairs["u"], pairs["v"])
        dropped, survivor = nodes[nodes != first], first[nodes != first]
        jaccard = _survivor_jaccard(signed, dropped, survivor)
        drop = {
            d: [s, round(float(j), 3)]
            for d, s, j in zip(resolve_ids(signed, dropped), resolve_ids(signed, survivor), jaccard)
        }
        write_drop(ctx.workdir, drop)
        write_text(ctx.workdir / "jaccard.svg", _jaccard_chart(jaccard))
        bands, rows = self.bands_rows()
        summary = {
            "documents": sum(c[0] for c in counts),
            "without_shingles": sum(c[1] for c in counts),
            "bands": bands,
            "rows": rows,
            "candidate_checks": sum(f[0] for f in found),  # pairs found in several partitions count once in each
            "similar_pairs": int(len(pairs)),
            "clusters": int(len(np.unique(survivor))),
            "dropped": int(len(dropped)),
            "seconds": round(time.perf_counter() - start, 2),
        }
        write_json(ctx.workdir / DONE, summary)

    def removal(self, survivor_and_jaccard: list) -> tuple[str, str]:
        survivor, jaccard = survivor_and_jaccard
        return "fuzzy_dedup.near_duplicate", f"{survivor} (estimated Jaccard {jaccard:.2f})"


def _sign_shard(task: tuple[FuzzyDedup, Path, int, Path, int]) -> tuple[int, int]:
    """Save one shard's signatures and spill its band keys by partition. Returns (documents, without shingles)."""
    block, path, shard, folder, seed = task
    counts = shard_file(folder, shard, ".counts.json")
    if shard_done(folder, shard):
        return tuple(json.loads(counts.read_text()))
    ids, hashes, positions = [], [], []
    for position, doc in enumerate(read_shards([path])):
        ids.append(doc.id)
        if block.applies_to(doc):
            hashes.append(shingle_hashes(doc.text, block.ngram))
            positions.append(position)
    signatures = np.full((len(ids), block.num_perm), EMPTY, dtype=np.uint32)
    signatures[positions] = MinHasher(block.num_perm, seed).signatures(hashes)
    # Documents without shingles get no band keys: their empty signatures would all collide.
    positions = np.array([p for p, h in zip(positions, hashes) if len(h)], dtype=np.int64)
    bands, rows = block.bands_rows()
    keys = band_keys(signatures[positions], bands, rows)
    records = np.empty(keys.size, BAND_RECORD)
    records["band"] = np.tile(np.arange(bands, dtype=np.uint32), len(positions))
    records["key"] = keys.ravel()
    records["doc"] = np.repeat(doc_keys(shard, positions), bands)

    save_npy(shard_file(folder, shard, ".sig.npy"), signatures)
    write_ids(folder, shard, ids)
    n, empty = len(hashes), len(hashes) - len(positions)
    write_text(counts, json.dumps([n, empty]))
    write_partitioned(folder, shard, records, records["key"] % np.uint64(block.partitions), block.partitions)
    return n, empty


def _bucket_partition(task: tuple[FuzzyDedup, Path, int, int, Path]) -> tuple[int, int]:
    """Candidate pairs of one partition, verified unless disabled; saved as edges. Returns (candidates, edges)."""
    block, folder, shards, p, out = task
    path = out / f"part-{p:05d}.npy"
    counts = out / f"part-{p:05d}.counts.json"
    if path.exists():
        return tuple(json.loads(counts.read_text()))
    pairs = candidate_pairs(read_partition(folder, shards, p, BAND_RECORD), VERIFY_WINDOW if block.verify else 1)
    candidates = len(pairs)
    if block.verify and candidates:
        docs = np.unique(np.concatenate([pairs["u"], pairs["v"]]))
        signatures = _gather_signatures(folder, docs)
        a = signatures[np.searchsorted(docs, pairs["u"])]
        b = signatures[np.searchsorted(docs, pairs["v"])]
        pairs = pairs[estimated_jaccard(a, b) >= block.threshold]
    write_text(counts, json.dumps([candidates, len(pairs)]))
    save_npy(path, pairs)
    return candidates, len(pairs)


def _gather_signatures(folder: Path, keys: np.ndarray) -> np.ndarray:
    """Signatures of the documents `keys`, read through memory maps of their shards' files."""
    out = None
    for s, mask, positions in by_shard(keys):
        signatures = np.load(shard_file(folder, s, ".sig.npy"), mmap_mode="r")
        if out is None:
            out = np.empty((len(keys), signatures.shape[1]), dtype=np.uint32)
        out[mask] = signatures[positions]
    return out


def _survivor_jaccard(folder: Path, dropped: np.ndarray, survivor: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Estimated Jaccard similarity of each dropped document to its cluster's survivor, in batches."""
    out = np.empty(len(dropped), dtype=np.float32)
    for lo in range(0, len(dropped), batch):
        d, s = dropped[lo : lo + batch], survivor[lo : lo + batch]
        out[lo : lo + batch] = estimated_jaccard(_gather_signatures(folder, d), _gather_signatures(folder, s))
    return out


def _jaccard_chart(jaccard: np.ndarray) -> str:
    edges = np.linspace(0, 1, 11)
    counts, _ = np.histogram(jaccard, bins=edges)
    rows = [(f"{lo:.1f}-{hi:.1f}", float(n), f"{n:,}") for lo, hi, n in zip(edges[:-1], edges[1:], counts)]
    return bar_chart("Near-duplicates removed, by estimated Jaccard to the kept copy", rows, "documents")
