"""Byte-level BPE: trained with Hugging Face `tokenizers`, encoded with tiktoken's BPE core.

Training and the frozen artifact (tokenizer.json) use `tokenizers`, the format the field
loads. Encoding the same merges with tiktoken's Rust core is about five times faster per core
here, so tokenmill encodes with it, but only after checking, when the tokenizer is frozen,
that it gives exactly the ids of tokenizer.json (see `first_disagreement`).
"""

from __future__ import annotations

from collections.abc import Iterable

import tiktoken
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer.config import TokenizerConfig
from tokenmill.tokenizer.special import SPECIAL_IDS, SPECIAL_TOKENS

# Pre-tokenization splits text into words before BPE, so that no token spans a word and its
# punctuation. GPT-4's pattern (cl100k) also caps numbers at three digits and keeps newlines
# apart from the text around them.
PATTERNS = {
    "gpt2": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
    "gpt4": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+""",
}


def pretokenizer_pattern(config: TokenizerConfig) -> str:
    return config.pretokenizer_pattern or PATTERNS[config.pretokenizer]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as byte-level BPE stores its tokens.

    `tokenizers` applies this map internally but does not expose it; tiktoken wants raw bytes.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars)}


BYTE_OF = {c: b for b, c in bytes_to_unicode().items()}


def token_bytes(token: str) -> bytes:
    """The bytes a byte-level BPE token (as tokenizer.json spells it) stands for."""
    return bytes(BYTE_OF[c] for c in token)


def train_bpe(texts: Iterable[str], config: TokenizerConfig) -> Tokenizer:
    pattern = pretokenizer_pattern(config)
    try:
        split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    except Exception as e:  # tokenizers raises a bare Exception for a bad pattern
        raise TokenmillError(f"tokenizer.pretokenizer_pattern is not a valid regular expression: {e}") from None
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        special_tokens=SPECIAL_TOKENS,  # first, so they get ids 0..7
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is a token: nothing is unknown
        show_progress=True,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def tiktoken_encoding(tokenizer: Tokenizer, pattern: str) -> tiktoken.Encoding:
    """The merges of a byte-level BPE `tokenizer` as a tiktoken Encoding with the same ids.

    tiktoken ranks a merge by the id of the token it makes; `tokenizers` assigns ids to learned
    tokens in the order of their merges, so the ranks are the ids.
    """
    ranks = {
        token_bytes(token): i
        for token, i in tokenizer.get_vocab(with_added_tokens=False).items()
        if i >= len(SPECIAL_TOKENS)
    }
    return tiktoken.Encoding("tokenmill", pat_str=pattern, mergeable_ranks=ranks, special_tokens=SPECIAL_IDS)


def first_disagreement(tokenizer: Tokenizer, encoding: tiktoken.Encoding, texts: list[str]) -> str | None:
    """The first text on which tiktoken's ids differ from those of `tokenizer`, trying `texts` and
    then every token's own text; None when they agree on all of them."""
    reference = Tokenizer.from_str(tokenizer.to_str())
    reference.encode_special_tokens = True  # special-token text is ordinary text here
    tokens = [token_bytes(token) for token in tokenizer.get_vocab(with_added_tokens=False)]
    # a piece of a character is not text on its own
    checks = texts + [t.decode("utf-8") for t in tokens if _is_utf8(t)]
    expected = reference.encode_batch(checks, add_special_tokens=False)
    for text, ids in zip(checks, expected):
        if encoding.encode_ordinary(text) != ids.ids:
            return text
    return None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
