"""Config sections of stage 03: training the tokenizer and encoding the corpus with it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from tokenmill.tokenizer.special import vocab_size_problem


class TokenizerConfig(BaseModel):
    """How to train the tokenizer (stage 03)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["bpe", "spm"] = Field("bpe", description="bpe: byte-level BPE (tokenizers); spm: SentencePiece.")
    vocab_size: int = Field(8192, description="Target vocabulary size, special and byte tokens included.")
    spm_model: Literal["bpe", "unigram"] = Field("unigram", description="SentencePiece algorithm (kind spm).")
    pretokenizer: Literal["gpt2", "gpt4"] = Field(
        "gpt4", description="Pre-tokenization regex of byte-level BPE: GPT-2's or GPT-4's (cl100k)."
    )
    pretokenizer_pattern: str | None = Field(None, description="A regex replacing the named pre-tokenizer.")
    min_frequency: int = Field(2, ge=1, description="A pair seen fewer times is never merged (kind bpe).")
    character_coverage: float = Field(
        0.9995, gt=0, le=1, description="Share of characters SentencePiece keeps; the rest fall back to bytes."
    )
    sample_bytes: int | None = Field(
        200_000_000, gt=0, description="Bytes of text to train on, drawn by the mixture weights; None: all."
    )
    stats_bytes: int = Field(2_000_000, gt=0, description="Bytes per domain on which statistics are measured.")

    @field_validator("vocab_size")
    @classmethod
    def _vocab_fits_specials(cls, vocab_size: int, info: ValidationInfo) -> int:
        problem = vocab_size_problem(info.data.get("kind", "bpe"), vocab_size)
        if problem:
            raise ValueError(problem)
        return vocab_size


class EncodeConfig(BaseModel):
    """How to encode the corpus into token shards (stage 03, encode)."""

    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(0.01, ge=0, lt=1, description="Share of documents held out for validation.")
    workers: int | None = Field(None, ge=1, description="Encoding processes; None: one per CPU core.")
    dtype: Literal["auto", "uint16", "uint32"] = Field("auto", description="auto: uint16 when the vocab fits.")
    shard_tokens: int = Field(100_000_000, gt=0, description="Tokens per output shard (documents never split).")
    chunk_bytes: int = Field(1_000_000, gt=0, description="Text handed to a worker at a time.")
