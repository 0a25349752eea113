"""Running curation blocks in tests: a corpus written to shards, a corpus block fitted and applied
document by document, or blocks run through the whole pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenmill.curate.block import Block, BlockStats, CorpusBlock, DocumentBlock, FitContext
from tokenmill.curate.executor import ExecutorConfig, LocalExecutor
from tokenmill.curate.mixture import Mixture
from tokenmill.curate.pipeline import run_blocks
from tokenmill.shards import ShardWriter, read_shards, shard_paths
from tokenmill.sources.document import Document


def write_shards(folder: Path, docs: list[Document], shards: int = 1) -> list[Path]:
    """`docs` in order, split into `shards` runs of about equal length, each in its own shards."""
    paths = []
    size = -(-len(docs) // shards)
    for k in range(shards):
        with ShardWriter(folder, prefix=f"in{k}") as w:
            for d in docs[k * size : (k + 1) * size]:
                w.write(d)
        paths += w.paths
    return paths


def fit(block: CorpusBlock, shards: list[Path], workdir: Path, seed: int = 0) -> CorpusBlock:
    """`block` fitted on `shards` in this process, and loaded."""
    block.fit(FitContext(shards=shards, workdir=workdir, executor=LocalExecutor(1, progress=False), seed=seed))
    block.load(workdir)
    return block


def fit_corpus(root: Path, block: CorpusBlock, docs: list[Document]) -> tuple[CorpusBlock, Path, list[Document], list[Path]]:
    """`block` fitted on `docs` written to shards under `root`: (block, its workdir, docs, shards)."""
    shards = write_shards(root / "in", docs)
    return fit(block, shards, root / "work"), root / "work", docs, shards


def run(block: DocumentBlock | CorpusBlock, docs: list[Document]) -> tuple[list[Document], BlockStats]:
    """The documents `block` keeps (copies: the originals stay as they were), and its stats."""
    stats, kept = BlockStats(block.name), []
    for d in docs:
        d = Document(d.id, d.text, d.source, dict(d.meta))
        if block.applies_to(d) and block.apply(d, stats) is None:
            continue
        kept.append(d)
    return kept, stats


def run_pipeline(tmp_path: Path, blocks: list[Block], docs: list[Document], name: str) -> tuple[dict[str, Any], dict[str, Document]]:
    """`blocks` run by the pipeline over `docs`, without a mixture: its stats.json, and the documents kept by id."""
    with ShardWriter(tmp_path / "in") as w:
        for d in docs:
            w.write(d)
    run_blocks(
        sorted((tmp_path / "in").glob("*.jsonl.zst")), blocks, Mixture(enabled=False), ExecutorConfig(workers=1),
        tmp_path / name, tmp_path / f"work-{name}", seed=0, progress=False,
    )
    stats = json.loads((tmp_path / name / "stats.json").read_text())
    return stats, {d.id: d for d in read_shards(shard_paths(tmp_path / name / "shards"))}
