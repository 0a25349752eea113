"""The special tokens: fixed ids shared by every tokenizer tokenmill trains.

Ids 0-7 are the same for both kinds, so a model, a chat template or a data loader never has to
look them up. They are control tokens: text that happens to contain `<|end|>` is encoded as
ordinary text unless the caller asks for special tokens explicitly.
"""

from __future__ import annotations

PAD = "<|pad|>"
BOS = "<|bos|>"
EOS = "<|eos|>"
MASK = "<|mask|>"
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END = "<|end|>"  # closes one chat turn

SPECIAL_TOKENS = [PAD, BOS, EOS, MASK, SYSTEM, USER, ASSISTANT, END]
SPECIAL_IDS = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

# SentencePiece needs an unknown piece; byte fallback means it is never produced.
SPM_UNK = "<unk>"
SPM_UNK_ID = len(SPECIAL_TOKENS)

N_BYTES = 256


def vocab_size_problem(kind: str, vocab_size: int) -> str | None:
    """Why `vocab_size` cannot hold the special and byte tokens of `kind` plus one learned token, or None."""
    fixed = len(SPECIAL_TOKENS) + (1 if kind == "spm" else 0) + N_BYTES
    if vocab_size > fixed:
        return None
    return (
        f"vocab_size {vocab_size} is too small for kind {kind}: the special tokens and the 256 byte "
        f"tokens alone take {fixed}; use at least {fixed + 1}"
    )
