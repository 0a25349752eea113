"""The frozen tokenizer folder: the files every later stage, transformers and the explorer read.

    tokenizer.json            the tokenizer in Hugging Face format: the one source of the ids
    tokenizer_config.json     transformers' settings: special tokens, chat template
    special_tokens_map.json   transformers' names for the special tokens
    tokenizer.model           the SentencePiece model (kind spm only)
    tokenmill_tokenizer.json  kind, vocabulary size, special ids, content hash, how to encode

The content hash is xxh3-64 of tokenizer.json's bytes. Token shards record it, so a later stage
can refuse a tokenizer other than the one its inputs were encoded with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xxhash
from tokenizers import Tokenizer as HFTokenizer

from tokenmill.atomic import atomic_open, write_json
from tokenmill.tokenizer.chat import JINJA_TEMPLATE
from tokenmill.tokenizer.special import (
    BOS,
    EOS,
    MASK,
    PAD,
    SPECIAL_IDS,
    SPECIAL_TOKENS,
    SPM_UNK,
    SPM_UNK_ID,
)

HF_FILE = "tokenizer.json"
META_FILE = "tokenmill_tokenizer.json"
SPM_FILE = "tokenizer.model"
FORMAT = 1


def content_hash(data: bytes) -> str:
    return xxhash.xxh3_64(data).hexdigest()


def freeze(out: Path, hf: HFTokenizer, meta: dict[str, Any], spm_model: bytes | None = None) -> dict[str, Any]:
    """Write the tokenizer folder into `out`; return its metadata (what tokenmill_tokenizer.json holds)."""
    data = hf.to_str(pretty=True).encode("utf-8")
    with atomic_open(out / HF_FILE) as f:
        f.write(data)
    if spm_model is not None:
        with atomic_open(out / SPM_FILE) as f:
            f.write(spm_model)
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "mask_token": MASK}
    if spm_model is not None:
        special["unk_token"] = SPM_UNK
    chat_tokens = SPECIAL_TOKENS[4:]
    write_json(out / "special_tokens_map.json", {**special, "additional_special_tokens": chat_tokens})
    write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **special,
            "additional_special_tokens": chat_tokens,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,  # decode must give back the text exactly
            "model_max_length": 1_000_000_000,
            "chat_template": JINJA_TEMPLATE,
        },
    )
    meta = {
        "format": FORMAT,
        **meta,
        "vocab_size": hf.get_vocab_size(with_added_tokens=True),
        "special_tokens": dict(SPECIAL_IDS, **({SPM_UNK: SPM_UNK_ID} if spm_model is not None else {})),
        "hash": content_hash(data),
    }
    write_json(out / META_FILE, meta)
    return meta
