"""SentencePiece: trained with `sentencepiece`, frozen as an equivalent Hugging Face tokenizer.json.

SentencePiece is set up so that encoding loses nothing: no Unicode normalization, no added
or collapsed spaces, and byte fallback for characters outside the vocabulary. Its one lossy
habit is that a literal U+2581 (▁, its mark for a space) in the text decodes as a space. The
exported tokenizer.json writes its pieces with real spaces instead of ▁, so that a literal ▁
is encoded by its bytes and decodes as itself; on any text without ▁ its ids are
SentencePiece's own (see docs/tokenizer.md for the one other difference, ties in unigram).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator

import sentencepiece
from tokenizers import AddedToken, Tokenizer, decoders, models

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer.config import TokenizerConfig
from tokenmill.tokenizer.special import BOS, EOS, PAD, SPECIAL_IDS, SPECIAL_TOKENS, SPM_UNK, SPM_UNK_ID

SPACE_MARK = "\u2581"
MAX_LINE_CHARS = 4000  # SentencePiece skips longer sentences; at most 4 bytes a character fits 16 KB
# Control and byte pieces are never matched in text by SentencePiece; in the Hugging Face unigram
# lattice they are unreachable only with a score no path of ordinary pieces can fall below. The
# characters they are spelled with are required in the vocabulary so that such a path exists.
UNREACHABLE = -1e9
REQUIRED_CHARS = "<>|0123456789ABCDEFabcdefghijklmnopqrstuvwxyz"


def training_lines(texts: Iterable[str]) -> Iterator[str]:
    """SentencePiece trains on sentences of one line; long lines are cut into pieces it accepts."""
    for text in texts:
        for line in text.split("\n"):
            for start in range(0, len(line), MAX_LINE_CHARS):
                yield line[start : start + MAX_LINE_CHARS]


def train_spm(texts: Iterable[str], config: TokenizerConfig) -> bytes:
    """Train SentencePiece on `texts`; return the serialized model (the .model file)."""
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=training_lines(texts),
            model_writer=model,
            model_type=config.spm_model,
            vocab_size=config.vocab_size,
            hard_vocab_limit=False,  # a small corpus gives a smaller vocabulary, as BPE does
            character_coverage=config.character_coverage,
            byte_fallback=True,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,  # runs of indentation become single tokens
            split_digits=True,
            required_chars=REQUIRED_CHARS,
            max_sentence_length=4 * MAX_LINE_CHARS,
            pad_id=SPECIAL_IDS[PAD], pad_piece=PAD,
            bos_id=SPECIAL_IDS[BOS], bos_piece=BOS,
            eos_id=SPECIAL_IDS[EOS], eos_piece=EOS,
            unk_id=SPM_UNK_ID, unk_piece=SPM_UNK,
            control_symbols=SPECIAL_TOKENS[3:],  # fill ids 3..7 in order
            num_threads=os.cpu_count() or 1,
            minloglevel=1,
        )
    except RuntimeError as e:
        raise TokenmillError(f"SentencePiece could not train: {e}") from None
    return model.getvalue()


def spm_to_hf(model: bytes, spm_model: str) -> Tokenizer:
    """The SentencePiece `model` as a Hugging Face tokenizer with the same ids."""
    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    n = sp.get_piece_size()
    fixed = {i for i in range(n) if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i)}
    pieces = [sp.id_to_piece(i) if i in fixed else sp.id_to_piece(i).replace(SPACE_MARK, " ") for i in range(n)]
    if spm_model == "unigram":
        scores = [UNREACHABLE if i in fixed else sp.get_score(i) for i in range(n)]
        hf_model = models.Unigram(list(zip(pieces, scores)), unk_id=SPM_UNK_ID, byte_fallback=True)
    else:
        hf_model = models.BPE(
            vocab={p: i for i, p in enumerate(pieces)},
            merges=_bpe_merges(pieces, fixed),
            unk_token=SPM_UNK,
            byte_fallback=True,
        )
    tokenizer = Tokenizer(hf_model)
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def _bpe_merges(pieces: list[str], fixed: set[int]) -> list[tuple[str, str]]:
    """Merges that rebuild SentencePiece's BPE: a pair merges when the piece it makes exists, and
    pieces made earlier (lower id, higher score) merge first, as SentencePiece's encoder does."""
    ids = {p: i for i, p in enumerate(pieces) if i not in fixed}
    merges = []
    for piece, i in ids.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                merges.append((i, ids[left], ids[right]))
    merges.sort()
    return [(pieces[a], pieces[b]) for _, a, b in merges]
