"""`Tokenizer`: a frozen tokenizer folder, loaded for encoding, decoding and chat.

Text is encoded as text: a special token's spelling inside it (say "<|end|>") stays ordinary
text unless `allow_special=True`. A lone surrogate (possible in a Python str, never in UTF-8)
is replaced by U+FFFD before encoding, and a surrogate pair written as two code points is
joined into its character, so `decode(encode(x)) == x` for every x that is valid Unicode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tiktoken
from tokenizers import Tokenizer as HFTokenizer

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer.artifact import FORMAT, HF_FILE, META_FILE, content_hash
from tokenmill.tokenizer.bpe import tiktoken_encoding, token_bytes
from tokenmill.tokenizer.chat import ChatTokens, Message, encode_chat, render_chat
from tokenmill.tokenizer.special import ASSISTANT, BOS, END, EOS, MASK, PAD, SYSTEM, USER


def clean_text(text: str) -> str:
    """`text` with surrogate pairs joined and lone surrogates replaced by U+FFFD: valid Unicode."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8, counting a lone surrogate as the three bytes it would take."""
    return len(text.encode("utf-8", "surrogatepass"))


class Tokenizer:
    """A tokenizer tokenmill trained (this class), or a model's own Hugging Face tokenizer
    (`PretrainedTokenizer`, a subclass); `Tokenizer.load` reads either from a folder."""

    def __init__(self, folder: Path, meta: dict[str, Any], hf_json: str) -> None:
        self._setup(folder, hf_json)
        self.meta = meta
        self.kind: str = meta["kind"]
        self.hash: str = meta["hash"]
        self.special_ids: dict[str, int] = meta["special_tokens"]
        self.pad_id, self.bos_id, self.eos_id = (self.special_ids[t] for t in (PAD, BOS, EOS))
        self.mask_id, self.end_id = self.special_ids[MASK], self.special_ids[END]
        self.system_id, self.user_id, self.assistant_id = (self.special_ids[t] for t in (SYSTEM, USER, ASSISTANT))
        self.stop_ids: set[int] = {self.end_id, self.eos_id}  # end of a chat turn, end of a document
        if meta.get("encoder") == "tiktoken":
            self._fast = tiktoken_encoding(self._hf, meta["pattern"])

    def _setup(self, folder: Path, hf_json: str) -> None:
        self.folder = folder
        self._hf = HFTokenizer.from_str(hf_json)  # finds special tokens in text
        self._hf_text = HFTokenizer.from_str(hf_json)  # reads everything as text
        self._hf_text.encode_special_tokens = True
        self.vocab_size: int = self._hf.get_vocab_size(with_added_tokens=True)
        self._bytes: list[bytes] | None = None
        self._fast: tiktoken.Encoding | None = None

    @classmethod
    def load(cls, folder: str | os.PathLike) -> Tokenizer:
        """The tokenizer of `folder`: tokenmill's own when tokenmill_tokenizer.json is there, else
        the Hugging Face tokenizer whose tokenizer.json it holds (a model imported from the Hub)."""
        folder = Path(folder)
        meta_path, hf_path = folder / META_FILE, folder / HF_FILE
        if not folder.is_dir():
            raise TokenmillError(f"tokenizer folder not found: {folder}")
        if not meta_path.is_file() and hf_path.is_file():
            # A subclass of this one, so imported here rather than at the top.
            from tokenmill.tokenizer.pretrained import PretrainedTokenizer

            return PretrainedTokenizer.load(folder)
        if not meta_path.is_file() or not hf_path.is_file():
            raise TokenmillError(
                f"{folder} is not a tokenizer folder: it needs {HF_FILE} (a Hugging Face tokenizer), with "
                f"{META_FILE} for one tokenmill trained (train one with `tokenmill tokenizer train`)"
            )
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TokenmillError(f"{meta_path} is not valid JSON: {e}") from None
        if meta.get("format") != FORMAT:
            raise TokenmillError(f"{meta_path} has format {meta.get('format')!r}; this tokenmill reads format {FORMAT}")
        data = hf_path.read_bytes()
        if content_hash(data) != meta["hash"]:
            raise TokenmillError(
                f"{hf_path} has changed since the tokenizer was frozen (hash {content_hash(data)}, "
                f"recorded {meta['hash']}); train it again rather than editing it"
            )
        return cls(folder, meta, data.decode("utf-8"))

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of `text`, without BOS/EOS. Special-token spellings are text unless `allow_special`."""
        text = clean_text(text)
        if self._fast is not None:
            if allow_special:
                return self._fast.encode(text, allowed_special="all")
            return self._fast.encode_ordinary(text)
        hf = self._hf if allow_special else self._hf_text
        return hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        """`encode` of each text. On the fast path one thread does it all, so one process is one core."""
        texts = [clean_text(t) for t in texts]
        if self._fast is not None:
            if allow_special:
                return [self._fast.encode(t, allowed_special="all") for t in texts]
            return [self._fast.encode_ordinary(t) for t in texts]
        hf = self._hf if allow_special else self._hf_text
        return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """The text of `ids`; bytes that do not form a whole character become U+FFFD."""
        return self._hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def prompt_ids(self, text: str) -> list[int]:
        """Ids of plain text as the model reads a document in training: BOS, then the text."""
        return [self.bos_id, *self.encode(text)]

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as the chat template writes it, for display."""
        return render_chat(messages, add_generation_prompt)

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> ChatTokens:
        """Ids of a conversation in the folder's chat template, and 1 on the assistant's tokens
        (its content and end of turn), the loss mask of SFT and DPO (see tokenmill.tokenizer.chat)."""
        return encode_chat(self, messages, add_generation_prompt)

    def token_bytes(self, i: int) -> bytes:
        """The bytes token `i` stands for (a special token: its spelling); may be part of a character."""
        if self._bytes is None:
            self._bytes = [self._spelled_bytes(self._hf.id_to_token(j)) for j in range(self.vocab_size)]
        return self._bytes[i]

    def _spelled_bytes(self, token: str) -> bytes:
        if token in self.special_ids:
            return token.encode("utf-8")
        if self.kind == "bpe":
            return token_bytes(token)
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return bytes([int(token[3:5], 16)])  # SentencePiece byte fallback piece
        return token.encode("utf-8")

    def id_to_token(self, i: int) -> str | None:
        return self._hf.id_to_token(i)

    def token_to_id(self, token: str) -> int | None:
        return self._hf.token_to_id(token)

    def check_hash(self, expected: str, what: str = "the input") -> None:
        """Refuse to go on when `what` was encoded with another tokenizer (its hash is `expected`)."""
        if expected != self.hash:
            raise TokenmillError(
                f"{what} was encoded with tokenizer {expected}, but the tokenizer in {self.folder} is "
                f"{self.hash}; encode again with this tokenizer, or use the one it was encoded with"
            )

    def __repr__(self) -> str:
        return f"Tokenizer({self.folder}, kind={self.kind}, vocab_size={self.vocab_size}, hash={self.hash})"
