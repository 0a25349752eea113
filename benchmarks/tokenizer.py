"""Tokenizer speed: training, and encoding on one core and on all cores, next to tiktoken and tokenizers.

    tokenmill data --source local --output /tmp/tm_local      # once: the built-in corpus (~28 MB)
    python benchmarks/tokenizer.py [--input /tmp/tm_local/shards] [--vocab-size 32768]

Prints one JSON line. The peers encode the same documents in the same run: tiktoken with an
Encoding built from the merges just trained (tiktoken cannot download its own vocabularies
here), and Hugging Face `tokenizers` with the frozen tokenizer.json. tokenmill's per-core
encoder is tiktoken's BPE core running tokenmill's merges, so the one-core ratio to tiktoken is
the overhead of tokenmill's wrapper; the all-cores figure is the whole `encode_corpus`: reading
and decompressing the shards, encoding in worker processes, writing token shards.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import tiktoken
import tokenizers

from tokenmill.shards import read_shards, shard_paths
from tokenmill.tokenizer import EncodeConfig, Tokenizer, TokenizerConfig, encode_corpus, train_tokenizer


def timed(fn, repeat: int = 1) -> float:
    """The best of `repeat` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default="/tmp/tm_local/shards", help="folder of document shards")
    parser.add_argument("--vocab-size", type=int, default=32768)
    args = parser.parse_args()
    paths = shard_paths(args.input)
    if not paths:
        sys.exit(f"no document shards in {args.input}; run: tokenmill data --source local --output /tmp/tm_local")
    texts = [d.text for d in read_shards(paths)]
    mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tokenizer"
        trained = train_tokenizer(paths, TokenizerConfig(vocab_size=args.vocab_size, sample_bytes=None), folder)
        tok = Tokenizer.load(folder)
        peer = tiktoken.Encoding(
            "peer", pat_str=tok.meta["pattern"], special_tokens=dict(tok.special_ids),
            mergeable_ranks={tok.token_bytes(i): i for i in range(len(tok.special_ids), tok.vocab_size)},
        )
        hf = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        assert peer.encode_ordinary_batch(texts[:200]) == tok.encode_batch(texts[:200])

        ours_1 = timed(lambda: tok.encode_batch(texts), repeat=3)
        tiktoken_1 = timed(lambda: [peer.encode_ordinary(t) for t in texts], repeat=3)
        hf_1 = timed(lambda: [hf.encode(t, add_special_tokens=False) for t in texts])
        tiktoken_all = timed(lambda: peer.encode_ordinary_batch(texts, num_threads=cores), repeat=3)
        hf_all = timed(lambda: hf.encode_batch(texts, add_special_tokens=False))
        corpus = {}
        for workers in (1, cores):
            stats = encode_corpus(paths, folder, Path(tmp) / f"tokens{workers}", EncodeConfig(workers=workers))
            corpus[workers] = stats["mb_per_second"]

    result = {
        "benchmark": "tokenizer",
        "corpus_mb": round(mb, 2),
        "vocab_size": tok.vocab_size,
        "cores": cores,
        "train_mb_per_s": trained["train_mb_per_second"],
        "encode_mb_per_s_1core": round(mb / ours_1, 2),
        "tiktoken_mb_per_s_1core": round(mb / tiktoken_1, 2),
        "tokenizers_mb_per_s_1core": round(mb / hf_1, 2),
        "ratio_1core_vs_tiktoken": round(tiktoken_1 / ours_1, 3),
        "ratio_1core_vs_tokenizers": round(hf_1 / ours_1, 3),
        "encode_corpus_mb_per_s_1worker": corpus[1],
        "encode_corpus_mb_per_s_all_cores": corpus[cores],
        "tiktoken_batch_mb_per_s_all_cores": round(mb / tiktoken_all, 2),
        "tokenizers_batch_mb_per_s_all_cores": round(mb / hf_all, 2),
        "ratio_all_cores_vs_tiktoken_batch": round(corpus[cores] / (mb / tiktoken_all), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
