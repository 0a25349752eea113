"""Locality-sensitive hashing over MinHash signatures: banding, candidate pairs, verification.

The signature is cut into `bands` bands of `rows` values; two documents become candidates
when all rows of at least one band agree. Documents of Jaccard similarity s agree on a row
with probability s, so they become candidates with probability 1 - (1 - s^r)^b, an S-curve.
`optimal_param` picks (b, r) for a threshold t by minimising the weighted area of false
positives (the curve below t) plus false negatives (one minus the curve above t), the
criterion of datasketch's MinHashLSH.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import xxhash

BAND_RECORD = np.dtype([("band", "<u4"), ("key", "<u8"), ("doc", "<u8")])
EDGE = np.dtype([("u", "<u8"), ("v", "<u8")])


@cache
def optimal_param(threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising fp_weight * FP area + fn_weight * FN area."""
    b, r = np.array([(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=float).T
    # 1 - (1 - s^r)^b is a polynomial of degree b*r <= num_perm, so Gauss-Legendre quadrature
    # with num_perm/2 + 1 nodes integrates it exactly (up to rounding).
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def area(lo: float, hi: float, false_negative: bool) -> np.ndarray:
        s = (hi - lo) / 2 * nodes + (hi + lo) / 2
        p = 1 - (1 - s[None, :] ** r[:, None]) ** b[:, None]
        return (1 - p if false_negative else p) @ weights * (hi - lo) / 2

    error = fp_weight * area(0.0, threshold, False) + fn_weight * area(threshold, 1.0, True)
    best = int(np.argmin(error))  # the first minimum, in datasketch's (b, then r) order
    return int(b[best]), int(r[best])


def candidate_probability(s: float | np.ndarray, bands: int, rows: int) -> float | np.ndarray:
    return 1 - (1 - np.asarray(s, dtype=float) ** rows) ** bands


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: a 64-bit hash of each band's rows, for each signature."""
    keys = np.empty((len(signatures), bands), dtype=np.uint64)
    for j in range(bands):
        band = np.ascontiguousarray(signatures[:, j * rows : (j + 1) * rows])
        keys[:, j] = [xxhash.xxh3_64_intdigest(row) for row in band]
    return keys


def candidate_pairs(records: np.ndarray, window: int) -> np.ndarray:
    """Pairs of documents that share a band key, as EDGE records with u before v in corpus order.

    Within each bucket (records of one (band, key)), documents in corpus order are paired with
    each of the `window` documents before them: all pairs of a bucket of up to window + 1
    documents, and a band of neighbours in a larger one (a bucket of a thousand copies of a
    template would otherwise give half a million pairs). `window=1` chains each bucket, which
    connects it exactly as well when no pair is verified afterwards.
    """
    records = records[np.lexsort((records["doc"], records["key"], records["band"]))]
    new = np.ones(len(records), dtype=bool)
    new[1:] = (records["band"][1:] != records["band"][:-1]) | (records["key"][1:] != records["key"][:-1])
    bucket = np.cumsum(new)
    docs = records["doc"]
    u, v = [], []
    for d in range(1, window + 1):
        same = bucket[d:] == bucket[:-d]
        if not same.any():  # no bucket holds more than d documents
            break
        u.append(docs[:-d][same])
        v.append(docs[d:][same])
    pairs = np.empty(sum(len(x) for x in u), EDGE)
    pairs["u"] = np.concatenate(u) if u else []
    pairs["v"] = np.concatenate(v) if v else []
    return np.unique(pairs)  # the same pair found in several bands


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Share of equal values of row-aligned signatures: the MinHash estimate of Jaccard similarity."""
    return (a == b).mean(axis=-1)
