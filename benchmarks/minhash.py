"""MinHash signatures per second: tokenmill against datasketch (and rensa when installed).

Every implementation gets the same documents and the same shingle strings (5-word shingles
by default), so the figures compare signature computation alone: shingle hashing included,
shingling excluded. `end_to_end` is tokenmill from raw text (shingling included), what the
fuzzy dedup block does per document. Each figure is the best of `repeats` runs, timed in CPU
seconds of this process (all its threads), so that other load on the machine does not skew
the ratios.

    python benchmarks/minhash.py [--shards /tmp/tm_local/shards] [--docs 10000]

prints one JSON line. Without the built-in corpus the documents are generated.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

from tokenmill.curate.dedup.minhash import MinHasher, hash_shingles, shingle_hashes, shingles

DOC_CHARS = 2000


def best_rate(n: int, fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return round(n / best, 1)


def bench_minhash(texts: list[str], num_perm: int = 128, ngram: int = 5, repeats: int = 3) -> dict:
    """Signatures per second of tokenmill, datasketch (update_batch, bulk) and rensa on `texts`."""
    from datasketch import MinHash

    shingle_sets = [shingles(t, ngram) for t in texts]
    encoded = [[s.encode() for s in sh] for sh in shingle_sets]
    hasher = MinHasher(num_perm, seed=1)
    n = len(texts)

    def datasketch_update_batch() -> None:
        for sh in encoded:
            m = MinHash(num_perm=num_perm, seed=1)
            m.update_batch(sh)

    figures = {
        "docs": n,
        "mean_doc_bytes": round(sum(len(t.encode()) for t in texts) / n),
        "mean_shingles": round(sum(map(len, shingle_sets)) / n, 1),
        "num_perm": num_perm,
        "ngram": ngram,
        "tokenmill_sig_per_s": best_rate(
            n, lambda: hasher.signatures([hash_shingles(sh) for sh in shingle_sets]), repeats
        ),
        "tokenmill_end_to_end_docs_per_s": best_rate(
            n, lambda: hasher.signatures([shingle_hashes(t, ngram) for t in texts]), repeats
        ),
        "datasketch_update_batch_sig_per_s": best_rate(n, datasketch_update_batch, repeats),
        "datasketch_bulk_sig_per_s": best_rate(n, lambda: MinHash.bulk(encoded, num_perm=num_perm, seed=1), repeats),
    }
    try:
        from rensa import RMinHash
    except ImportError:
        RMinHash = None
    if RMinHash is not None:
        figures["rensa_sig_per_s"] = best_rate(
            n, lambda: RMinHash.digest_matrix_from_token_sets(shingle_sets, num_perm, 1), repeats
        )
    ours = figures["tokenmill_sig_per_s"]
    figures["ratio_vs_datasketch_update_batch"] = round(ours / figures["datasketch_update_batch_sig_per_s"], 2)
    figures["ratio_vs_datasketch_bulk"] = round(ours / figures["datasketch_bulk_sig_per_s"], 2)
    if "rensa_sig_per_s" in figures:
        figures["ratio_vs_rensa"] = round(ours / figures["rensa_sig_per_s"], 2)
    return figures


def corpus_texts(shards: Path, docs: int) -> list[str]:
    """Pieces of about DOC_CHARS characters cut at spaces from the built-in corpus's documents."""
    from tokenmill.shards import read_shards, shard_paths

    texts = []
    for doc in read_shards(shard_paths(shards)):
        text = doc.text
        while len(text) > DOC_CHARS // 2 and len(texts) < docs:
            cut = text.find(" ", DOC_CHARS)
            cut = len(text) if cut < 0 else cut
            texts.append(text[:cut])
            text = text[cut:]
        if len(texts) >= docs:
            break
    return texts


def generated_texts(docs: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    vocab = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(20000)]
    return [" ".join(rng.choices(vocab, k=340)) for _ in range(docs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shards", type=Path, default=Path("/tmp/tm_local/shards"), help="document shards to cut texts from"
    )
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--ngram", type=int, default=5)
    args = parser.parse_args()
    source = "built-in corpus" if args.shards.is_dir() else "generated"
    texts = corpus_texts(args.shards, args.docs) if args.shards.is_dir() else generated_texts(args.docs)
    print(json.dumps({"benchmark": "minhash", "texts": source, **bench_minhash(texts, args.num_perm, args.ngram)}))


if __name__ == "__main__":
    main()
