"""Stage 03: train the tokenizer on the weighted mixture, freeze it, and measure it."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer.artifact import freeze
from tokenmill.tokenizer.bpe import first_disagreement, pretokenizer_pattern, tiktoken_encoding, train_bpe
from tokenmill.tokenizer.config import TokenizerConfig
from tokenmill.tokenizer.mixture import multipliers, read_weights, sample_texts, survey
from tokenmill.tokenizer.special import vocab_size_problem
from tokenmill.tokenizer.spm import spm_to_hf, train_spm
from tokenmill.tokenizer.stats import write_stats
from tokenmill.tokenizer.tokenizer import Tokenizer


def train_tokenizer(
    shard_paths: Iterable[str | Path],
    config: TokenizerConfig,
    out_dir: str | Path,
    weights: Mapping | str | Path | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train a tokenizer on document shards into `out_dir`; return the figures for the manifest.

    `weights` are per-domain mixture weights (a dict, or a mixture.json written by stage 02).
    """
    problem = vocab_size_problem(config.kind, config.vocab_size)
    if problem:
        raise TokenmillError(problem)
    paths = [Path(p) for p in shard_paths]
    if not paths:
        raise TokenmillError("no document shards to train the tokenizer on")
    for p in paths:
        if not p.is_file():
            raise TokenmillError(f"document shard not found: {p}")
    weights = read_weights(weights)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    corpus = survey(paths, config.stats_bytes)
    if sum(corpus.bytes.values()) == 0:
        raise TokenmillError(f"no text to train the tokenizer on in {len(paths)} shard(s), first {paths[0]}")
    multiplier = multipliers(corpus.bytes, weights, config.sample_bytes)
    taken: Counter = Counter()
    texts = sample_texts(paths, multiplier, seed, taken)

    print(f"training {_describe(config)} ...", file=sys.stderr)
    start = time.perf_counter()
    spm_model = None
    if config.kind == "bpe":
        hf = train_bpe(texts, config)
    else:
        spm_model = train_spm(texts, config)
        hf = spm_to_hf(spm_model, config.spm_model)
    seconds = time.perf_counter() - start
    sample_bytes = sum(taken.values())
    if sample_bytes == 0:
        raise TokenmillError(f"the mixture weights {weights} leave no text to train on")

    meta: dict[str, Any] = {"kind": config.kind, "config": config.model_dump(mode="json")}
    if config.kind == "bpe":
        meta["pattern"] = pretokenizer_pattern(config)
        meta["encoder"] = _choose_encoder(hf, meta["pattern"], corpus.samples)
    else:
        meta["encoder"] = "tokenizers"
    meta["training"] = {
        "seed": seed,
        "weights": weights,
        "multipliers": {d: round(m, 6) for d, m in sorted(multiplier.items())},
        "corpus_bytes": dict(sorted(corpus.bytes.items())),
        "corpus_documents": dict(sorted(corpus.documents.items())),
        "sample_bytes": dict(sorted(taken.items())),
        "seconds": round(seconds, 3),
        "mb_per_second": round(sample_bytes / 1e6 / max(seconds, 1e-9), 3),
    }
    meta = freeze(out, hf, meta, spm_model)

    tok = Tokenizer.load(out)
    stats = write_stats(tok, corpus.samples, out)
    return {
        "kind": config.kind,
        "vocab_size": tok.vocab_size,
        "hash": tok.hash,
        "encoder": meta["encoder"],
        "sample_bytes": sample_bytes,
        "train_seconds": meta["training"]["seconds"],
        "train_mb_per_second": meta["training"]["mb_per_second"],
        "bytes_per_token": {d: row["bytes_per_token"] for d, row in stats["compression"].items()},
    }


def _choose_encoder(hf, pattern: str, samples: Mapping[str, list[str]]) -> str:
    """tiktoken when it gives exactly the ids of tokenizer.json on the corpus samples and on every
    token of the vocabulary; `tokenizers` (slower, always right) otherwise."""
    texts = [t for domain in sorted(samples) for t in samples[domain]]
    try:
        differs = first_disagreement(hf, tiktoken_encoding(hf, pattern), texts)
    except ValueError as e:  # tiktoken's regex engine rejects the pattern
        print(f"tiktoken cannot use the pre-tokenizer pattern ({e}); encoding with tokenizers", file=sys.stderr)
        return "tokenizers"
    if differs is not None:
        print(f"tiktoken and tokenizers differ on {differs[:60]!r}; encoding with tokenizers", file=sys.stderr)
        return "tokenizers"
    return "tiktoken"


def _describe(config: TokenizerConfig) -> str:
    what = "byte-level BPE" if config.kind == "bpe" else f"SentencePiece {config.spm_model}"
    return f"{what}, vocabulary {config.vocab_size:,}"
