"""The reference set of the model-based blocks, and deterministic samples of the corpus.

The perplexity filter and the quality classifier both learn what good text looks like from
the corpus's own best domain: by default the first present in `REFERENCE_PRIORITY` (edited
knowledge first, web and code never). Both train on samples, drawn in two passes over the
shards so that no process sees more than one shard at a time:

1. `census`: documents and bytes per domain;
2. `extract`: each shard writes the documents whose rank falls under its domain's sampling
   rate (set from the census, with a margin) into a sample shard under the block's workdir.

A document's rank is a hash of its id and the run's seed, so a sample is a uniform draw that
does not depend on how the corpus is cut into shards, on the number of workers, or on the
executor. `read_sample` then keeps the lowest-ranked documents up to the exact caps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import xxhash

from tokenmill.curate.block import FitContext
from tokenmill.curate.report import sum_domains
from tokenmill.shards import ShardWriter, read_shards, shard_paths
from tokenmill.sources.document import Document

# Highest quality first. Curated, edited text is the usual reference (CCNet and the GPT-3
# classifier used Wikipedia; others books); web text only when nothing better is there.
REFERENCE_PRIORITY = ("wiki", "books", "papers", "reference", "manuals", "legal", "dialogue", "web")
NOT_PROSE = ("code",)
RANKS = 2**64
SAMPLE_MARGIN = 1.25  # a hash-rate sample falls short of its target by chance; draw more, then cut


def choose_reference(docs_by_domain: Mapping[str, int]) -> list[str]:
    """The highest-priority domain present; otherwise the largest prose domain; [] if none."""
    for domain in REFERENCE_PRIORITY:
        if docs_by_domain.get(domain, 0) > 0:
            return [domain]
    prose = [(n, d) for d, n in docs_by_domain.items() if n > 0 and d not in NOT_PROSE]
    return [max(prose)[1]] if prose else []


def rank(doc_id: str, seed: int) -> int:
    return xxhash.xxh64_intdigest(doc_id.encode("utf-8"), seed)


def in_held_out(doc_id: str, seed: int, fraction: float) -> bool:
    """Whether a document is in the held-out split: a second hash, independent of the sample's rank."""
    return rank(doc_id, seed + 1) < fraction * RANKS


def census(ctx: FitContext) -> dict[str, list[int]]:
    """[documents, bytes] per domain over the whole corpus."""
    return sum_domains(ctx.executor.map(_census_shard, ctx.shards))


def _census_shard(path: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for doc in read_shards([path]):
        cell = out.setdefault(doc.source, [0, 0])
        cell[0] += 1
        cell[1] += len(doc.text.encode("utf-8", errors="replace"))
    return out


def sampling_rate(sizes: Mapping[str, list[int]], domains: Iterable[str], max_docs: int, max_bytes: int) -> float:
    """The share of `domains`'s documents to extract so that about `max_docs` / `max_bytes` remain."""
    docs = sum(sizes.get(d, [0, 0])[0] for d in domains)
    size = sum(sizes.get(d, [0, 0])[1] for d in domains)
    if docs == 0:
        return 0.0
    return min(1.0, SAMPLE_MARGIN * min(max_docs / docs, max_bytes / max(size, 1)))


def extract(ctx: FitContext, rates: Mapping[str, float], folder: Path) -> list[Path]:
    """Write the sampled documents (those with rank < rate of their domain) to shards in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    items = [(path, i, dict(rates), ctx.seed, folder) for i, path in enumerate(ctx.shards)]
    ctx.executor.map(_extract_shard, items)
    return shard_paths(folder)


def _extract_shard(item: tuple[Path, int, dict[str, float], int, Path]) -> int:
    path, index, rates, seed, folder = item
    n = 0
    with ShardWriter(folder, prefix=f"sample-{index:05d}") as writer:
        for doc in read_shards([path]):
            rate = rates.get(doc.source, 0.0)
            if rate > 0 and rank(doc.id, seed) < rate * RANKS:
                writer.write(doc)
                n += 1
    return n


def read_sample(paths: list[Path], domains: Iterable[str], max_docs: int, max_bytes: int, seed: int) -> list[Document]:
    """The lowest-ranked documents of `domains` among the extracted ones, up to both caps."""
    domains = set(domains)
    docs = sorted((d for d in read_shards(paths) if d.source in domains), key=lambda d: (rank(d.id, seed), d.id))
    out, size = [], 0
    for doc in docs:
        n = len(doc.text.encode("utf-8", errors="replace"))
        if len(out) >= max_docs or (out and size + n > max_bytes):
            break
        out.append(doc)
        size += n
    return out
