"""Calibration data for GPTQ and AWQ, and the inputs of each transformer block on it.

Calibration sequences come from token shards (windows of the train split, drawn with a seed)
or from curated documents (a seeded sample of 4 × n_samples documents, tokenized with the model
folder's tokenizer, each document BOS ... EOS as in the token shards (a model without BOS, such as
Qwen, gets none), windows drawn from their concatenation). Without a source, `builtin_calibration_ids` samples the built-in
corpus the same way. Both methods then walk the model one block
at a time: `block_inputs` runs the embedding once and stops at the first block, and each block's
outputs become the next block's inputs.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import xxhash

from tokenmill.errors import TokenmillError
from tokenmill.shards import read_shards, shard_paths
from tokenmill.tokenizer.tokenizer import Tokenizer
from tokenmill.tokenizer.tokens import token_shard_paths


def calibration_ids(
    source: str | Path, n_samples: int, seq_len: int, seed: int = 0, tokenizer_dir: str | Path | None = None
) -> torch.Tensor:
    """(n, seq_len) token ids, n = n_samples or fewer when the source is short.

    `source` is a folder of token shards (train-*.bin), or document shards (*.jsonl.zst, a file,
    a folder of them, or a folder with shards/), which need `tokenizer_dir` (a folder with
    tokenizer.json, e.g. the model folder)."""
    source = Path(source)
    if source.is_dir() and token_shard_paths(source, "train"):
        from tokenmill.tokenizer.dataset import TokenDataset

        data = TokenDataset(source, "train", seq_len=seq_len, seed=seed)
        if tokenizer_dir is not None and (Path(tokenizer_dir) / "tokenizer.json").is_file():
            # Ids of another tokenizer (say the run's own, beside a model imported from the Hub) are
            # valid ids of this one too, but other text: GPTQ and AWQ would fit noise.
            own = Tokenizer.load(tokenizer_dir).hash
            if data.tokenizer_hash not in (None, own):
                raise TokenmillError(
                    f"the token shards in {source} were encoded with another tokenizer than {tokenizer_dir}'s: "
                    f"encode the documents with `tokenmill encode --tokenizer {tokenizer_dir}`, or pass the "
                    "document shards as --calib"
                )
        x, _ = data.batch(0, min(n_samples, len(data)))
        return x
    paths = _document_shards(source)
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise TokenmillError(f"calibrating on documents ({source}) needs a tokenizer.json in the model folder; pass token shards instead")
    # A seeded sample of documents from the whole corpus (those whose hashed ids are smallest), not
    # just its first shard: one pass, memory for the sample only.
    sample = heapq.nsmallest(4 * n_samples, read_shards(paths), key=lambda d: xxhash.xxh64_intdigest(f"{seed}:{d.id}".encode()))
    return _windows((d.text for d in sample), Tokenizer.load(tokenizer_dir), n_samples, seq_len, seed, str(source))


def builtin_calibration_ids(n_samples: int, seq_len: int, seed: int, tokenizer_dir: str | Path) -> tuple[torch.Tensor, dict]:
    """Calibration windows from the built-in corpus (tokenmill.sources.local: the code and reference
    domains, which read only this interpreter's standard library, so they need no network and no
    groff), tokenized with the model folder's tokenizer. Returns the ids and what they came from
    (source, documents, samples, seq_len, tokens), for the user and quantization.json."""
    from tokenmill.sources.document import SkipLog
    from tokenmill.sources.local import LocalCorpusSource

    if not (Path(tokenizer_dir) / "tokenizer.json").is_file():
        raise TokenmillError(f"calibrating on the built-in corpus needs a tokenizer.json in {tokenizer_dir}; pass --calib instead")
    # About 4 bytes of text per token, twice over so that whole windows remain after sampling, and
    # at least 1 MB, so that a small request still draws on a hundred or more documents.
    source = LocalCorpusSource(include=list(BUILTIN_DOMAINS), max_bytes=max(8 * n_samples * seq_len, 1_000_000))
    texts = [doc.text for doc in source.read(SkipLog())]
    ids = _windows(texts, Tokenizer.load(tokenizer_dir), n_samples, seq_len, seed, "the built-in corpus")
    used = {"source": f"built-in corpus (local: {', '.join(BUILTIN_DOMAINS)})", "documents": len(texts),
            "samples": len(ids), "seq_len": seq_len, "tokens": ids.numel()}
    return ids, used


BUILTIN_DOMAINS = ("code", "reference")


def _windows(texts: Iterable[str], tokenizer: Tokenizer, n_samples: int, seq_len: int, seed: int, where: str) -> torch.Tensor:
    """Up to n_samples windows of seq_len tokens, drawn with `seed` from the documents' concatenation
    (each BOS ... EOS, as in the token shards)."""
    eos = [tokenizer.eos_id] if tokenizer.eos_id is not None else []  # a bare tokenizer.json may name none
    tokens = []
    for text in texts:
        tokens += [*tokenizer.prompt_ids(text), *eos]
    n_windows = len(tokens) // seq_len
    if n_windows == 0:
        raise TokenmillError(f"{where} holds {len(tokens)} tokens: too few for one calibration window of {seq_len}")
    starts = np.random.default_rng(seed).permutation(n_windows)[:n_samples] * seq_len
    ids = torch.tensor(tokens[: n_windows * seq_len], dtype=torch.long)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def _document_shards(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    for folder in (source, source / "shards"):
        if folder.is_dir() and shard_paths(folder):
            return shard_paths(folder)
    raise TokenmillError(f"no calibration data in {source}: expected token shards (train-*.bin) or document shards (*.jsonl.zst)")


class _Captured(Exception):
    """Raised by the hook on the first block once it holds its inputs: the rest of the model need not run."""


@dataclass
class BlockInputs:
    """Hidden states entering a block, one tensor (batch, seq, d_model) per calibration batch, and the
    block's other arguments (RoPE, mask, cache, positions, return_attn), the same for every batch."""

    hidden: list[torch.Tensor]
    args: tuple

    def run(self, block: nn.Module) -> list[torch.Tensor]:
        """The block's outputs on every batch."""
        return [block(h, *self.args)[0] for h in self.hidden]


@torch.no_grad()
def block_inputs(model: nn.Module, ids: torch.Tensor, batch_size: int) -> BlockInputs:
    """The inputs of the first transformer block on the calibration ids."""
    captured: dict = {}

    def hook(module: nn.Module, args: tuple) -> None:
        captured.setdefault("args", args[1:])
        captured.setdefault("hidden", []).append(args[0])
        raise _Captured

    device = next(model.parameters()).device
    handle = model.layers[0].register_forward_pre_hook(hook)
    try:
        for batch in ids.split(batch_size):
            try:
                model(batch.to(device))
            except _Captured:
                pass
    finally:
        handle.remove()
    return BlockInputs(captured["hidden"], captured["args"])


def linears_of(block: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers of a block by name within it (attn.wqkv, attn.wo, ffn.w1, ffn.w2, ffn.w3)."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}
