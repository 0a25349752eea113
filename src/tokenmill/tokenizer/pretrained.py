"""`PretrainedTokenizer`: a model's own Hugging Face tokenizer (Llama, Qwen, Gemma, ...) behind the
`Tokenizer` interface, so that an imported model is fine-tuned, aligned, served and explored with
the tokens and the chat format it was trained on.

The folder holds the files the Hub ships: tokenizer.json (the one source of the ids, encoded with
the `tokenizers` library), tokenizer_config.json and special_tokens_map.json (the named special
tokens, the chat template), optionally chat_template.jinja and generation_config.json (the ids
that end an answer). Chat goes through the model's own Jinja template, rendered and encoded as
`transformers.apply_chat_template(..., tokenize=True)` does, so the ids are the same.

The assistant's tokens of a conversation (SFT's loss mask) come from the template too: its
`{% generation %}` blocks where it has them, as transformers' `return_assistant_tokens_mask`;
otherwise each assistant turn is what follows the rendering of the conversation before it with
the generation prompt, up to and including the template's end-of-turn token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer.artifact import HF_FILE, content_hash
from tokenmill.tokenizer.bpe import token_bytes
from tokenmill.tokenizer.chat import ChatTokens, Message
from tokenmill.tokenizer.template import ChatTemplate, read_template
from tokenmill.tokenizer.tokenizer import Tokenizer, clean_text

CONFIG_FILE = "tokenizer_config.json"
SPECIAL_MAP_FILE = "special_tokens_map.json"
GENERATION_CONFIG_FILE = "generation_config.json"
# The names transformers passes to a chat template (its SPECIAL_TOKENS_ATTRIBUTES).
NAMED_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Tokens that close a chat turn in the common families: Llama 3, ChatML (Qwen, ...), Gemma, Phi-3.
END_OF_TURN = ("<|eot_id|>", "<|im_end|>", "<end_of_turn>", "<|end|>")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenmillError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise TokenmillError(f"{path} must hold a JSON object")
    return value


def _spelling(value: Any) -> str | None:
    """A named special token as the config writes it: a string or an AddedToken object."""
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _eos_ids(path: Path) -> set[int]:
    """generation_config.json's eos_token_id: one id or a list of them."""
    value = _read_json(path).get("eos_token_id")
    ids = value if isinstance(value, list) else [] if value is None else [value]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise TokenmillError(f"{path}: eos_token_id must be an id or a list of ids, got {value!r}")
    return set(ids)


class PretrainedTokenizer(Tokenizer):
    """A Hugging Face tokenizer folder. `bos_id` is None where the model has no BOS (Qwen);
    `end_id` is the token that closes a chat turn; `stop_ids` every id that ends an answer."""

    def __init__(self, folder: Path, hf_json: str) -> None:
        config = _read_json(folder / CONFIG_FILE)
        legacy = _read_json(folder / SPECIAL_MAP_FILE)
        self._setup(folder, hf_json)
        self.hash = content_hash(hf_json.encode("utf-8"))
        self.meta = {"kind": "pretrained", "hash": self.hash}
        self.byte_level = '"ByteLevel"' in hf_json  # GPT-2 byte characters in the vocabulary
        self.kind = "bpe" if self.byte_level else "spm"
        added = self._hf.get_added_tokens_decoder()
        self._added = {t.content for t in added.values()}
        self.special_ids = {t.content: i for i, t in added.items() if t.special}
        self.named_tokens = {
            name: spelling for name in NAMED_TOKENS
            if (spelling := _spelling(config.get(name)) or _spelling(legacy.get(name))) is not None
        }
        self.bos_id, self.eos_id = self._id_of("bos_token"), self._id_of("eos_token")
        self.unk_id, self.mask_id = self._id_of("unk_token"), self._id_of("mask_token")
        self.system_id = self.user_id = self.assistant_id = None  # roles are spelled by the template

        source = read_template(folder, config)
        self.template = None if source is None else ChatTemplate(source, self.named_tokens, f"the chat template of {folder}")
        ends = [t for t in END_OF_TURN if source is not None and t in source and self.token_to_id(t) is not None]
        self.end_of_turn = ends[0] if ends else self.named_tokens.get("eos_token")
        self.end_id = self.token_to_id(self.end_of_turn) if self.end_of_turn else self.eos_id
        self.stop_ids = _eos_ids(folder / GENERATION_CONFIG_FILE) | {self.token_to_id(t) for t in ends}
        self.stop_ids |= {i for i in (self.eos_id, self.end_id) if i is not None}
        # Padding is never attended to or trained on, so any id does where the model names none.
        pad = self._id_of("pad_token")
        self.pad_id = pad if pad is not None else self.end_id if self.end_id is not None else 0

    def _id_of(self, name: str) -> int | None:
        spelling = self.named_tokens.get(name)
        return None if spelling is None else self.token_to_id(spelling)

    @classmethod
    def load(cls, folder) -> PretrainedTokenizer:
        folder = Path(folder)
        path = folder / HF_FILE
        if not path.is_file():
            raise TokenmillError(f"{folder} is not a tokenizer folder: {HF_FILE} is missing")
        return cls(folder, path.read_text(encoding="utf-8"))

    def prompt_ids(self, text: str) -> list[int]:
        """Ids of plain text as the model reads a document: the tokenizer's own additions (BOS for
        Llama and Gemma, nothing for Qwen) around the text, which is encoded as text."""
        return self._hf_text.encode(clean_text(text), add_special_tokens=True).ids

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        """The conversation as the model's template writes it."""
        return self._template().render(messages, add_generation_prompt)[0]

    def encode_chat(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> ChatTokens:
        """Ids of the rendered conversation (as transformers encodes it: special-token spellings in
        the text are those tokens, nothing is added around it) and the mask of the assistant's tokens."""
        template = self._template()
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise TokenmillError("a conversation is a non-empty list of {'role': ..., 'content': ...} messages")
        for i, m in enumerate(messages):
            if not isinstance(m, Mapping) or "role" not in m:
                raise TokenmillError(f"messages[{i}] must be a mapping with 'role' and 'content'")
        text, spans = template.render(messages, add_generation_prompt)
        if not template.has_generation_blocks:
            spans = self._assistant_spans(template, messages, text)
        encoding = self._hf.encode(text, add_special_tokens=False)
        return ChatTokens(encoding.ids, _overlap_mask(encoding.offsets, spans))

    def _template(self) -> ChatTemplate:
        if self.template is None:
            raise TokenmillError(
                f"the tokenizer in {self.folder} has no chat template (no chat_template in {CONFIG_FILE}, "
                f"no chat_template.jinja): it cannot render a conversation"
            )
        return self.template

    def _assistant_spans(self, template: ChatTemplate, messages: Sequence[Message], text: str) -> list[tuple[int, int]]:
        """Where each assistant turn of `messages` lies in their rendering `text`: from the end of
        the conversation before it with the generation prompt, through the next end-of-turn token."""
        spans = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = template.render(messages[:i], add_generation_prompt=True)[0] if i else ""
            if not text.startswith(before):
                raise TokenmillError(
                    f"{template.where} writes the turns before messages[{i}] differently once the conversation "
                    f"goes on, so the assistant's tokens cannot be told apart; add {{% generation %}} blocks to it"
                )
            start = len(before)
            # Past the content first (templates may trim it), so an end-token spelling inside it is not the end.
            content = m.get("content")
            found = text.find(content.strip(), start) if isinstance(content, str) else -1
            after = found + len(content.strip()) if found >= 0 else start
            end = text.find(self.end_of_turn, after) if self.end_of_turn else -1
            if end < 0:
                raise TokenmillError(
                    f"{template.where} writes no end-of-turn token ({self.end_of_turn}) after messages[{i}], "
                    "so the assistant's tokens cannot be told apart"
                )
            spans.append((start, end + len(self.end_of_turn)))
        return spans

    def _spelled_bytes(self, token: str) -> bytes:
        if token in self._added:
            return token.encode("utf-8")
        if self.byte_level:
            return token_bytes(token)
        if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            return bytes([int(token[3:5], 16)])  # SentencePiece byte fallback piece
        return token.replace("\u2581", " ").encode("utf-8")  # SentencePiece writes a space as ▁

    def __repr__(self) -> str:
        return f"PretrainedTokenizer({self.folder}, vocab_size={self.vocab_size}, hash={self.hash})"


def _overlap_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """1 for each token whose characters overlap a span, as transformers marks assistant tokens
    (a token that straddles a span's edge belongs to it). Spans and offsets are both in order."""
    mask = [0] * len(offsets)
    k = 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        if end > spans[k][0]:
            mask[t] = 1
    return mask
