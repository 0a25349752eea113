"""The `tokenmill tokenizer` and `tokenmill encode` verbs."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import BaseModel, ValidationError

from tokenmill.atomic import atomic_dir
from tokenmill.cliargs import add_output
from tokenmill.errors import TokenmillError
from tokenmill.shards import shard_paths

INPUT_HELP = (
    "document shards: .jsonl.zst files written by tokenmill, or folders holding them "
    "(directly or in shards/, as `tokenmill data` writes them); repeatable"
)


def document_shards(inputs: list[str]) -> list[Path]:
    """The shard files named by `inputs`, in the order given (a folder's shards in name order)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            shards = shard_paths(path) or shard_paths(path / "shards")
            if not shards:
                raise TokenmillError(f"--input {path} holds no document shards (*.jsonl.zst), nor does {path / 'shards'}")
            found += shards
        else:
            raise TokenmillError(f"--input {path} does not exist")
    return found


def _settings(model: type[BaseModel], **values) -> BaseModel:
    try:
        return model(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(f"--{'-'.join(map(str, err['loc'])).replace('_', '-') or 'options'}: {err['msg']}" for err in e.errors())
        raise TokenmillError(problems) from None


def _replaceable(output: Path, marker: str) -> None:
    if output.exists() and any(output.iterdir()) and not (output / marker).exists():
        # The output is replaced as a whole; never replace a folder tokenmill did not write.
        raise TokenmillError(f"--output {output} exists and was not written by this command; choose an empty or new folder")


def register(sub: argparse._SubParsersAction) -> None:
    tok = sub.add_parser(
        "tokenizer",
        help="train a tokenizer (byte-level BPE or SentencePiece) and measure it",
        description=(
            "Train a byte-level BPE or SentencePiece tokenizer on document shards ('train'), freeze it "
            "as a Hugging Face tokenizer.json with fixed special and chat token ids, and measure its "
            "vocabulary and compression per domain ('stats'). See docs/tokenizer.md."
        ),
    )
    verbs = tok.add_subparsers(title="actions", metavar="ACTION", required=True)

    p = verbs.add_parser(
        "train",
        help="train a tokenizer on document shards",
        description=(
            "Train a tokenizer on document shards, drawing documents by domain according to the "
            "mixture weights up to a byte budget, and freeze it into DIR: tokenizer.json (Hugging "
            "Face format), tokenizer_config.json and special_tokens_map.json for transformers, "
            "tokenizer.model for SentencePiece, tokenmill_tokenizer.json (kind, special ids, "
            "content hash) and stats.json with compression.svg and vocabulary.svg. Special tokens "
            "have fixed ids 0-7: <|pad|> <|bos|> <|eos|> <|mask|> <|system|> <|user|> <|assistant|> <|end|>."
        ),
    )
    p.add_argument("--input", dest="inputs", action="extend", nargs="+", required=True, metavar="PATH", help=INPUT_HELP)
    p.add_argument("--kind", choices=["bpe", "spm"], default="bpe", help="byte-level BPE (tokenizers) or SentencePiece")
    p.add_argument("--spm-model", choices=["bpe", "unigram"], help="SentencePiece algorithm (default unigram)")
    p.add_argument("--vocab-size", type=int, default=8192, metavar="N", help="target vocabulary size (default 8192)")
    p.add_argument("--pretokenizer", choices=["gpt2", "gpt4"], help="pre-tokenization regex of BPE (default gpt4)")
    p.add_argument("--weights", metavar="FILE", help="mixture.json of stage 02, or a JSON {domain: weight}")
    p.add_argument("--sample-bytes", type=int, metavar="N", help="bytes of text to train on (default 200,000,000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the document draw (default 0)")
    add_output(p, "folder to write the tokenizer to")
    p.set_defaults(func=_cmd_train)

    p = verbs.add_parser(
        "stats",
        help="measure a tokenizer on document shards",
        description=(
            "Measure a trained tokenizer on document shards: bytes per token and tokens per word of "
            "each domain, what its vocabulary holds (whitespace, digits, code keywords, non-Latin "
            "script, pieces of characters), its longest tokens and how a sample sentence and a line "
            "of code split. Writes stats.json, compression.svg and vocabulary.svg."
        ),
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR", help="a folder written by `tokenmill tokenizer train`")
    p.add_argument("--input", dest="inputs", action="extend", nargs="+", required=True, metavar="PATH", help=INPUT_HELP)
    p.add_argument("--stats-bytes", type=int, default=2_000_000, metavar="N", help="bytes measured per domain")
    add_output(p, "where to write the statistics (default: the tokenizer folder)", required=False)
    p.set_defaults(func=_cmd_stats)

    p = sub.add_parser(
        "encode",
        help="encode document shards into token shards for pre-training",
        description=(
            "Encode document shards with a trained tokenizer, or a model folder's own Hugging Face tokenizer, "
            "into token shards in DIR: train-NNNNN.bin and val-NNNNN.bin (uint16 or uint32 ids, a header and a "
            "document index; each document BOS ... EOS, without BOS for a tokenizer that has none, like Qwen's; "
            "see docs/tokenizer.md), split by a hash of the "
            "document id, on all cores, and encode_stats.json with tokens per split and domain."
        ),
    )
    p.add_argument("--tokenizer", required=True, metavar="DIR",
                   help="a folder written by `tokenmill tokenizer train`, or a model folder with its tokenizer files")
    p.add_argument("--input", dest="inputs", action="extend", nargs="+", required=True, metavar="PATH", help=INPUT_HELP)
    add_output(p, "folder to write token shards to")
    p.add_argument("--workers", type=int, metavar="N", help="encoding processes (default: one per core)")
    p.add_argument("--val-fraction", type=float, metavar="F", help="share of documents for validation (default 0.01)")
    p.add_argument("--dtype", choices=["auto", "uint16", "uint32"], help="token id type (default auto)")
    p.add_argument("--shard-tokens", type=int, metavar="N", help="tokens per output shard (default 100,000,000)")
    p.set_defaults(func=_cmd_encode)


def _cmd_train(args: argparse.Namespace) -> int:
    from tokenmill.tokenizer.artifact import META_FILE
    from tokenmill.tokenizer.config import TokenizerConfig
    from tokenmill.tokenizer.train import train_tokenizer

    config = _settings(
        TokenizerConfig, kind=args.kind, spm_model=args.spm_model, vocab_size=args.vocab_size,
        pretokenizer=args.pretokenizer, sample_bytes=args.sample_bytes,
    )
    paths = document_shards(args.inputs)
    output = Path(args.output)
    _replaceable(output, META_FILE)
    with atomic_dir(output) as tmp:
        summary = train_tokenizer(paths, config, tmp, weights=args.weights, seed=args.seed)
    print(f"{summary['kind']} tokenizer, {summary['vocab_size']:,} tokens, hash {summary['hash']} -> {output}")
    _print_compression(summary["bytes_per_token"])
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from tokenmill.tokenizer.mixture import survey
    from tokenmill.tokenizer.stats import write_stats
    from tokenmill.tokenizer.tokenizer import Tokenizer

    tok = Tokenizer.load(args.tokenizer)
    corpus = survey(document_shards(args.inputs), args.stats_bytes)
    if not corpus.samples:
        raise TokenmillError("the --input shards hold no text to measure")
    output = Path(args.output or args.tokenizer)
    output.mkdir(parents=True, exist_ok=True)
    stats = write_stats(tok, corpus.samples, output)
    print(f"{tok}: statistics in {output / 'stats.json'}")
    _print_compression({d: row["bytes_per_token"] for d, row in stats["compression"].items()})
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from tokenmill.tokenizer.config import EncodeConfig
    from tokenmill.tokenizer.encode import STATS_FILE, encode_corpus

    config = _settings(
        EncodeConfig, workers=args.workers, val_fraction=args.val_fraction, dtype=args.dtype, shard_tokens=args.shard_tokens
    )
    paths = document_shards(args.inputs)
    output = Path(args.output)
    _replaceable(output, STATS_FILE)
    with atomic_dir(output) as tmp:
        stats = encode_corpus(paths, args.tokenizer, tmp, config)
    for split, row in stats["splits"].items():
        print(f"{split:>5}: {row['documents']:,} documents, {row['tokens']:,} tokens in {len(row['shards'])} shard(s)")
    print(f"{stats['tokens_per_second']:,} tokens/s ({stats['mb_per_second']} MB/s, {stats['workers']} workers) -> {output}")
    return 0


def _print_compression(bytes_per_token: dict[str, float]) -> None:
    for domain, value in bytes_per_token.items():
        print(f"{domain:>12}: {value:.2f} bytes/token")
