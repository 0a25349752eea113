"""Stage 03b: encode the corpus into token shards, on every core, in constant memory.

The main process only decompresses the document shards and hands their lines out in chunks
of about `chunk_bytes`; each worker process parses and encodes whole chunks (BOS ... EOS per
document) and the main process writes the results in the order the chunks were read, so the
output is the same for any number of workers. At most two chunks per worker are in flight,
so memory does not grow with the corpus. A document goes to the validation split when the
hash of its id falls below `val_fraction`: the split depends on the document alone, not on
the order or the run. A line that is not a document is counted and left out.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import multiprocessing.pool
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xxhash
from tqdm import tqdm

from tokenmill.atomic import write_json, write_text
from tokenmill.compression import open_binary
from tokenmill.errors import TokenmillError
from tokenmill.figures import bar_chart, human_count
from tokenmill.sources.document import Document
from tokenmill.tokenizer.config import EncodeConfig
from tokenmill.tokenizer.tokenizer import Tokenizer, utf8_size
from tokenmill.tokenizer.tokens import TokenShardWriter, token_dtype

SPLITS = ("train", "val")
STATS_FILE = "encode_stats.json"


def is_validation(doc_id: str, val_fraction: float) -> bool:
    return xxhash.xxh3_64_intdigest(doc_id.encode("utf-8", "surrogatepass")) < val_fraction * 2**64


@dataclass
class Chunk:
    """Consecutive lines of one document shard; the first is line `first_line` of `path`."""

    lines: list[bytes]
    path: str
    first_line: int


@dataclass
class Encoded:
    """A chunk encoded: per split, the tokens of its documents one after another and their lengths;
    per document, (split, domain, bytes of text); and the lines left out."""

    tokens: list[np.ndarray]
    lengths: list[np.ndarray]
    docs: list[tuple[int, str, int]]
    empty: int = 0
    unreadable: list[str] = field(default_factory=list)


def _chunks(paths: list[Path], chunk_bytes: int) -> Iterator[Chunk]:
    for path in paths:
        lines: list[bytes] = []
        size, first = 0, 1
        try:
            with open_binary(path) as f:
                for number, line in enumerate(f, 1):
                    lines.append(line)
                    size += len(line)
                    if size >= chunk_bytes:
                        yield Chunk(lines, str(path), first)
                        lines, size, first = [], 0, number + 1
        except EOFError as e:
            raise TokenmillError(f"document shard {path} is truncated: {e}") from None
        if lines:
            yield Chunk(lines, str(path), first)


def encode_chunk(tok: Tokenizer, chunk: Chunk, val_fraction: float, dtype: str) -> Encoded:
    texts: list[list[str]] = [[] for _ in SPLITS]
    out = Encoded([], [], [])
    for i, line in enumerate(chunk.lines):
        if not line.strip():
            continue
        try:
            doc = Document.from_dict(json.loads(line))
            if not isinstance(doc.text, str) or not isinstance(doc.id, str):
                raise TypeError("'id' and 'text' must be strings")
        except (ValueError, KeyError, TypeError) as e:
            out.unreadable.append(f"{chunk.path}:{chunk.first_line + i}: {type(e).__name__}: {e}"[:300])
            continue
        if not doc.text:
            out.empty += 1
            continue
        split = int(is_validation(doc.id, val_fraction))
        texts[split].append(doc.text)
        out.docs.append((split, str(doc.source), utf8_size(doc.text)))
    for split_texts in texts:
        ids = tok.encode_batch(split_texts)
        lengths = np.array([len(x) + 2 for x in ids], dtype=np.int64)
        tokens = np.empty(int(lengths.sum()), dtype=dtype)
        pos = 0
        for x in ids:
            tokens[pos] = tok.bos_id
            tokens[pos + 1 : pos + 1 + len(x)] = x
            tokens[pos + 1 + len(x)] = tok.eos_id
            pos += len(x) + 2
        out.tokens.append(tokens)
        out.lengths.append(lengths)
    return out


# The tokenizer of the worker processes: set before they are forked, so that they inherit it
# loaded instead of each loading it again.
_worker_tokenizer: Tokenizer | None = None


def _init_worker() -> None:
    # One worker is one core: keep `tokenizers` from starting threads of its own.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"


def _encode_in_worker(chunk: Chunk, val_fraction: float, dtype: str) -> Encoded:
    return encode_chunk(_worker_tokenizer, chunk, val_fraction, dtype)


@contextmanager
def _workers(tok: Tokenizer, workers: int) -> Iterator[mp.pool.Pool | None]:
    """A pool of `workers` processes holding `tok`; None (encode here) when workers is 1."""
    global _worker_tokenizer
    if workers == 1:
        yield None
        return
    _worker_tokenizer = tok
    try:
        # fork, before any progress bar or encoder thread is running here: the workers start at
        # once, with the tokenizer already loaded, and need no importable __main__.
        with mp.get_context("fork").Pool(workers, _init_worker) as pool:
            yield pool
    finally:
        _worker_tokenizer = None


def _encoded(
    chunks: Iterator[Chunk], tok: Tokenizer, pool: mp.pool.Pool | None, workers: int, val_fraction: float, dtype: str
) -> Iterator[Encoded]:
    """Each chunk encoded, in chunk order, with at most two chunks per worker in flight."""
    if pool is None:
        for chunk in chunks:
            yield encode_chunk(tok, chunk, val_fraction, dtype)
        return
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.apply_async(_encode_in_worker, (chunk, val_fraction, dtype)))
        if len(pending) >= 2 * workers:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def encode_corpus(
    shard_paths: Iterable[str | Path], tokenizer_dir: str | Path, out_dir: str | Path, config: EncodeConfig
) -> dict[str, Any]:
    """Encode document shards into `out_dir`/{train,val}-NNNNN.bin; write and return encode_stats.json."""
    paths = [Path(p) for p in shard_paths]
    if not paths:
        raise TokenmillError("no document shards to encode")
    for p in paths:
        if not p.is_file():
            raise TokenmillError(f"document shard not found: {p}")
    tok = Tokenizer.load(tokenizer_dir)
    dtype = token_dtype(tok.vocab_size, config.dtype)
    workers = config.workers or len(os.sched_getaffinity(0))
    out = Path(out_dir)
    writers = [TokenShardWriter(out, split, dtype, config.shard_tokens) for split in SPLITS]
    tally = _Tally()

    start = time.perf_counter()
    with _workers(tok, workers) as pool, tqdm(desc="encode", unit="tok", unit_scale=True) as bar:
        try:
            for encoded in _encoded(_chunks(paths, config.chunk_bytes), tok, pool, workers, config.val_fraction, dtype.str):
                for writer, tokens, lengths in zip(writers, encoded.tokens, encoded.lengths):
                    writer.write(tokens, lengths)
                tally.add(encoded)
                bar.update(sum(len(t) for t in encoded.tokens))
        except BaseException:
            for w in writers:
                w.abort()
            raise
        shards = {split: [p.name for p in w.close()] for split, w in zip(SPLITS, writers)}
    seconds = time.perf_counter() - start
    if not any(shards.values()):
        raise TokenmillError(f"no text to encode in {len(paths)} shard(s), first {paths[0]}")

    total = tally.splits["train"]["tokens"] + tally.splits["val"]["tokens"]
    text_bytes = tally.splits["train"]["bytes"] + tally.splits["val"]["bytes"]
    stats = {
        "tokenizer": {"hash": tok.hash, "kind": tok.kind, "vocab_size": tok.vocab_size, "folder": str(tok.folder)},
        "dtype": dtype.name,
        "val_fraction": config.val_fraction,
        "workers": workers,
        "splits": {split: {**tally.splits[split], "shards": shards[split]} for split in SPLITS},
        "domains": tally.domains,
        "skipped_empty": tally.empty,
        "skipped_unreadable": {"count": tally.unreadable, "examples": tally.examples},
        "tokens": total,
        "bytes": text_bytes,
        "bytes_per_token": round(text_bytes / max(total, 1), 3),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(total / seconds),
        "mb_per_second": round(text_bytes / 1e6 / seconds, 3),
    }
    write_json(out / STATS_FILE, stats)
    rows = [
        (domain, row["train"]["tokens"] + row["val"]["tokens"], f"{row['train']['tokens'] + row['val']['tokens']:,}")
        for domain, row in sorted(tally.domains.items())
    ]
    write_text(out / "tokens.svg", bar_chart("Tokens per domain (train + val)", rows, "tokens", human_count))
    return stats


class _Tally:
    """Documents, tokens and bytes per split and per domain, and the lines left out."""

    def __init__(self, keep: int = 5) -> None:
        self.splits = {split: {"documents": 0, "tokens": 0, "bytes": 0} for split in SPLITS}
        self.domains: dict[str, dict[str, dict[str, int]]] = {}
        self.empty = self.unreadable = 0
        self.examples: list[str] = []
        self.keep = keep

    def add(self, encoded: Encoded) -> None:
        self.empty += encoded.empty
        self.unreadable += len(encoded.unreadable)
        self.examples += encoded.unreadable[: self.keep - len(self.examples)]
        lengths = [iter(split_lengths.tolist()) for split_lengths in encoded.lengths]
        for split, domain, size in encoded.docs:
            n = next(lengths[split])
            row_domain = self.domains.setdefault(domain, {s: {"documents": 0, "tokens": 0, "bytes": 0} for s in SPLITS})
            for row in (self.splits[SPLITS[split]], row_domain[SPLITS[split]]):
                row["documents"] += 1
                row["tokens"] += n
                row["bytes"] += size
