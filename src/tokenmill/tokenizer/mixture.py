"""The training sample of the tokenizer: documents drawn by domain according to the mixture weights.

A domain's weight multiplies its natural share, as in the mixture of stage 02 (2.0: twice as
much of that domain as the corpus holds, 0.5: half). The whole is then scaled to the byte
budget. A document is taken `floor(m)` times plus once more with probability `frac(m)`, where
`m` is its domain's multiplier; the draw hashes the document id with the seed, so the same
corpus, weights and seed always give the same sample.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
from tqdm import tqdm

from tokenmill.errors import TokenmillError
from tokenmill.shards import read_shards
from tokenmill.tokenizer.tokenizer import clean_text, utf8_size

Weights = Mapping[str, float]


def read_weights(weights: Weights | Mapping | str | os.PathLike | None) -> dict[str, float] | None:
    """Per-domain weights from a dict, a mixture dict (`{"domains": {d: {"weight": w}}}`) or mixture.json."""
    if weights is None:
        return None
    where = "the mixture weights"
    if isinstance(weights, (str, os.PathLike)):
        where = str(weights)
        try:
            weights = json.loads(Path(weights).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TokenmillError(f"mixture weights file not found: {where}") from None
        except json.JSONDecodeError as e:
            raise TokenmillError(f"{where} is not valid JSON: {e}") from None
    if isinstance(weights, Mapping) and isinstance(weights.get("domains"), Mapping):
        try:
            weights = {d: entry["weight"] for d, entry in weights["domains"].items()}
        except (KeyError, TypeError):
            raise TokenmillError(f"{where}: every entry of 'domains' needs a 'weight'") from None
    if not isinstance(weights, Mapping) or not weights:
        raise TokenmillError(f"{where}: expected {{domain: weight}} or {{'domains': {{domain: {{'weight': w}}}}}}")
    out = {}
    for domain, w in weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
            raise TokenmillError(f"{where}: weight of domain '{domain}' must be a number >= 0, got {w!r}")
        out[str(domain)] = float(w)
    return out


@dataclass
class CorpusSurvey:
    """What one pass over the corpus tells: bytes and documents per domain, and a few documents of
    each domain (the first `keep_bytes`) on which to measure the tokenizer."""

    bytes: Counter = field(default_factory=Counter)
    documents: Counter = field(default_factory=Counter)
    samples: dict[str, list[str]] = field(default_factory=dict)


def survey(paths: list[Path], keep_bytes: int) -> CorpusSurvey:
    found = CorpusSurvey()
    kept: Counter = Counter()
    with tqdm(desc="survey corpus", unit="B", unit_scale=True, leave=False) as bar:
        for doc in read_shards(paths):
            n = utf8_size(doc.text)
            found.bytes[doc.source] += n
            found.documents[doc.source] += 1
            if kept[doc.source] < keep_bytes and doc.text:
                found.samples.setdefault(doc.source, []).append(clean_text(doc.text))
                kept[doc.source] += n
            bar.update(n)
    return found


def multipliers(domain_bytes: Mapping[str, int], weights: Weights | None, budget: int | None) -> dict[str, float]:
    """How many times each domain's documents are taken (on average) into the sample."""
    w = {d: (weights.get(d, 1.0) if weights else 1.0) for d in domain_bytes}
    weighted = sum(domain_bytes[d] * w[d] for d in domain_bytes)
    if weighted == 0:
        raise TokenmillError(
            f"the mixture weights leave no text to train on: weights {dict(weights or {})}, "
            f"domains in the corpus {sorted(domain_bytes)}"
        )
    scale = min(1.0, budget / weighted) if budget else 1.0
    return {d: w[d] * scale for d in domain_bytes}


def copies(doc_id: str, multiplier: float, seed: int) -> int:
    whole = math.floor(multiplier)
    draw = xxhash.xxh3_64_intdigest(f"{seed}\x00{doc_id}".encode("utf-8", "surrogatepass")) / 2**64
    return whole + (draw < multiplier - whole)


def sample_texts(paths: list[Path], multiplier: Mapping[str, float], seed: int, taken: Counter) -> Iterator[str]:
    """The texts of the training sample, in corpus order; `taken` counts the bytes drawn per domain."""
    for doc in read_shards(paths):
        k = copies(doc.id, multiplier.get(doc.source, 0.0), seed)
        if k and doc.text:
            taken[doc.source] += k * utf8_size(doc.text)
            text = clean_text(doc.text)  # the trainers take valid Unicode only
            for _ in range(k):
                yield text
