"""Curation speed on this machine: each block's documents per second, MinHash against datasketch,
and the whole stage end to end. Prints one JSON line.

    .venv/bin/python benchmarks/curate.py [--shards DIR] [--docs N] [--no-pipeline]

Each block runs alone, in one process, over the documents of its domains from the built-in
corpus (made in a temporary folder unless --shards names document shards); a corpus block's
time is its fit plus its apply. MinHash: signatures per second of our vectorised MinHasher
and of datasketch's `MinHash.update_batch` on the same documents' 5-word shingles (128
permutations), measured by benchmarks/minhash.py's runner: shingling excluded, hashing of
the shingles included.
The pipeline figure is `curate` with the default config and one worker per CPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tokenmill.curate.block import BlockStats, CorpusBlock, FitContext
from tokenmill.curate.config import CurateConfig
from tokenmill.curate.executor import LocalExecutor
from tokenmill.curate.pipeline import curate
from tokenmill.shards import ShardWriter, read_shards, shard_paths

sys.path.insert(0, str(Path(__file__).parent))
from minhash import bench_minhash  # noqa: E402  (the MinHash benchmark's runner: the same peers and figures)


def builtin_shards(folder: Path) -> list[Path]:
    from tokenmill.sources.collect import collect
    from tokenmill.sources.local import LocalCorpusSource

    collect([LocalCorpusSource()], folder)
    return shard_paths(folder / "shards")


def bench_block(block, docs, workdir: Path) -> dict:
    docs = [d for d in docs if block.applies_to(d)]
    fit_s = 0.0
    if isinstance(block, CorpusBlock):
        with ShardWriter(workdir / "in") as w:
            for d in docs:
                w.write(d)
        start = time.perf_counter()
        block.fit(FitContext(shards=w.paths, workdir=workdir / "state", executor=LocalExecutor(1, progress=False), seed=0))
        fit_s = time.perf_counter() - start
        block.load(workdir / "state")
    docs = copy.deepcopy(docs)  # blocks may change the documents they are given
    stats = BlockStats(block.name)
    if docs:
        block.apply(copy.deepcopy(docs[0]), BlockStats(block.name))  # lazy state (models, regexes) outside the timing
    start = time.perf_counter()
    for d in docs:
        stats.seen(d)
        if block.apply(d, stats) is not None:
            stats.kept(d)
    apply_s = time.perf_counter() - start
    total = fit_s + apply_s
    return {
        "docs": len(docs),
        "mb": round(stats.bytes_in / 1e6, 2),
        "docs_per_s": round(len(docs) / total, 1) if total else None,
        "mb_per_s": round(stats.bytes_in / 1e6 / total, 2) if total else None,
        "fit_s": round(fit_s, 3),
        "apply_s": round(apply_s, 3),
        "removed": stats.docs_in - stats.docs_out,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=Path, help="folder of document shards (default: the built-in corpus, made here)")
    ap.add_argument("--docs", type=int, help="only N documents, spread over the corpus")
    ap.add_argument("--no-pipeline", action="store_true", help="skip the end-to-end run")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = shard_paths(args.shards) if args.shards else builtin_shards(tmp / "corpus")
        docs = list(read_shards(paths))
        if args.docs and args.docs < len(docs):  # every k-th document: the corpus is ordered by domain
            docs = docs[:: len(docs) // args.docs][: args.docs]
        config = CurateConfig()
        blocks = {}
        for block in config.blocks():
            print(f"benchmark {block.name} ...", file=sys.stderr)
            blocks[block.name] = bench_block(block.model_copy(deep=True), docs, tmp / block.name)

        print("benchmark minhash ...", file=sys.stderr)
        minhash = bench_minhash([d.text for d in docs], num_perm=128, ngram=5)
        result = {
            "benchmark": "curate",
            "cpus": os.cpu_count(),
            "docs": len(docs),
            "mb": round(sum(len(d.text.encode()) for d in docs) / 1e6, 2),
            "blocks": blocks,
            "minhash": minhash,
        }
        if not args.no_pipeline:
            if args.docs:
                with ShardWriter(tmp / "slice") as w:
                    for d in docs:
                        w.write(d)
                paths = w.paths
            start = time.perf_counter()
            out = curate(paths, config, tmp / "out", tmp / "work", seed=0)
            seconds = time.perf_counter() - start
            result["pipeline"] = {
                "workers": os.cpu_count(),
                "seconds": round(seconds, 2),
                "docs_per_s": round(len(docs) / seconds, 1),
                "docs_kept": out["metrics"]["documents_kept"],
            }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
