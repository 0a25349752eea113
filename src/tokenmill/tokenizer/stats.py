"""Vocabulary statistics: how well the tokenizer compresses each domain and what its tokens are.

Written next to the tokenizer as stats.json, compression.svg and vocabulary.svg, for the
explorer and for a person comparing two tokenizers.
"""

from __future__ import annotations

import keyword
import unicodedata
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenmill.atomic import write_json, write_text
from tokenmill.figures import bar_chart
from tokenmill.tokenizer.tokenizer import Tokenizer, utf8_size

SAMPLE_SENTENCE = "The naïve café's tokenizer doesn't split 1,234,567 — or 東京 — the way you'd expect 🙂."
SAMPLE_CODE = "    for i, token in enumerate(tokens[:512]):  # skip <|bos|>"

# Python's keywords and those of the other languages a corpus of code is most likely to hold.
CODE_KEYWORDS = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | {
    "auto", "bool", "case", "catch", "char", "const", "default", "do", "done", "double", "echo", "enum",
    "esac", "export", "extern", "fi", "float", "fn", "func", "function", "goto", "impl", "int", "let",
    "long", "mut", "new", "null", "private", "protected", "public", "return", "self", "short", "signed",
    "sizeof", "static", "struct", "switch", "template", "then", "this", "throw", "typedef", "typename",
    "union", "unsigned", "use", "var", "virtual", "void", "volatile",
}


def _is_non_latin(text: str) -> bool:
    return any(ch.isalpha() and not unicodedata.name(ch, "").startswith("LATIN") for ch in text)


def vocabulary_shares(tok: Tokenizer) -> dict[str, Any]:
    """Counts and shares of the learned vocabulary (special tokens left out) by what a token is."""
    counts = {"whitespace": 0, "digits": 0, "code_keywords": 0, "non_latin": 0, "partial_utf8": 0}
    ordinary = [i for i in range(tok.vocab_size) if tok.id_to_token(i) not in tok.special_ids]
    for i in ordinary:
        try:
            text = tok.token_bytes(i).decode("utf-8")
        except UnicodeDecodeError:
            counts["partial_utf8"] += 1
            continue
        stripped = text.strip()
        counts["whitespace"] += text.isspace()
        counts["digits"] += stripped.isdigit()
        counts["code_keywords"] += stripped in CODE_KEYWORDS
        counts["non_latin"] += _is_non_latin(text)
    n = len(ordinary)
    return {"tokens": n, "counts": counts, "shares": {k: round(v / n, 4) for k, v in counts.items()}}


def token_text(tok: Tokenizer, i: int) -> str:
    """A token as a person reads it: its text, with a piece of a character shown as \\xNN."""
    return tok.token_bytes(i).decode("utf-8", "backslashreplace")


def split_example(tok: Tokenizer, text: str) -> dict[str, Any]:
    ids = tok.encode(text)
    return {"text": text, "ids": ids, "tokens": [token_text(tok, i) for i in ids]}


def compression(tok: Tokenizer, samples: Mapping[str, list[str]]) -> dict[str, dict[str, Any]]:
    """Bytes per token and tokens per word (fertility) of each domain's sample, and of all of them."""
    rows = {}
    total = {"documents": 0, "bytes": 0, "words": 0, "tokens": 0}
    for domain, texts in sorted(samples.items()):
        row = {
            "documents": len(texts),
            "bytes": sum(utf8_size(t) for t in texts),
            "words": sum(len(t.split()) for t in texts),
            "tokens": sum(len(ids) for ids in tok.encode_batch(texts)),
        }
        for k in total:
            total[k] += row[k]
        rows[domain] = row
    rows["all"] = total
    for row in rows.values():
        row["bytes_per_token"] = round(row["bytes"] / max(row["tokens"], 1), 3)
        row["tokens_per_word"] = round(row["tokens"] / max(row["words"], 1), 3)
    return rows


def vocabulary_stats(tok: Tokenizer, samples: Mapping[str, list[str]], longest: int = 20) -> dict[str, Any]:
    by_length = sorted(
        (i for i in range(tok.vocab_size) if tok.id_to_token(i) not in tok.special_ids),
        key=lambda i: (-len(tok.token_bytes(i)), i),
    )
    return {
        "kind": tok.kind,
        "vocab_size": tok.vocab_size,
        "hash": tok.hash,
        "compression": compression(tok, samples),
        "vocabulary": vocabulary_shares(tok),
        "longest_tokens": [
            {"id": i, "text": token_text(tok, i), "bytes": len(tok.token_bytes(i))} for i in by_length[:longest]
        ],
        "examples": {"sentence": split_example(tok, SAMPLE_SENTENCE), "code": split_example(tok, SAMPLE_CODE)},
    }


def write_stats(tok: Tokenizer, samples: Mapping[str, list[str]], out: Path) -> dict[str, Any]:
    """Measure `tok` on `samples` (domain -> texts); write stats.json and its two figures into `out`."""
    stats = vocabulary_stats(tok, samples)
    write_json(out / "stats.json", stats)
    rows = [
        (domain, row["bytes_per_token"], f"{row['bytes_per_token']:.2f} B/token, {row['tokens_per_word']:.2f} tokens/word")
        for domain, row in stats["compression"].items()
    ]
    write_text(out / "compression.svg", bar_chart(f"Bytes per token, vocabulary {tok.vocab_size:,}", rows,
                                                  "bytes per token (more is better compression)"))
    vocab = stats["vocabulary"]
    rows = [(name.replace("_", " "), share, f"{share:.1%} ({vocab['counts'][name]:,})") for name, share in vocab["shares"].items()]
    write_text(out / "vocabulary.svg", bar_chart(f"What the {vocab['tokens']:,} learned tokens are", rows,
                                                  "share of the vocabulary", lambda v: f"{v:.0%}"))
    return stats
