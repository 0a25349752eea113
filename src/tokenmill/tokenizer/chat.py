"""The chat template: the one format of a conversation, for SFT, DPO, PPO, the server and the explorer.

    <|bos|><|system|>You are terse.<|end|><|user|>Hi<|end|><|assistant|>Hello.<|end|>

A conversation is an optional system turn, then user and assistant turns taking turns,
starting with the user. Each turn is its role token, the content, and <|end|>. With
`add_generation_prompt` the text ends with <|assistant|>, where the model continues; it stops
at <|end|>. The ids are built turn by turn, so the content of a message is always encoded as
text: a user who types "<|end|>" cannot close a turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer.special import ASSISTANT, BOS, END, ROLE_TOKENS

if TYPE_CHECKING:
    from tokenmill.tokenizer.tokenizer import Tokenizer

Message = Mapping[str, str]

# The same template for transformers' apply_chat_template (checked against render_chat in the tests).
JINJA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def check_messages(messages: Sequence[Message], add_generation_prompt: bool = False) -> None:
    """Refuse, with the reason and the position, a conversation the template cannot render."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise TokenmillError("a conversation is a non-empty list of {'role': ..., 'content': ...} messages")
    previous = None
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise TokenmillError(f"messages[{i}] must be a mapping with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLE_TOKENS:
            raise TokenmillError(f"messages[{i}] has role {role!r}; roles are {', '.join(ROLE_TOKENS)}")
        if not isinstance(content, str):
            raise TokenmillError(f"messages[{i}] ({role}) content must be text, got {type(content).__name__}")
        if role == "system" and i > 0:
            raise TokenmillError(f"messages[{i}] is a system message; only the first message may be one")
        if role == previous:
            raise TokenmillError(
                f"messages[{i - 1}] and messages[{i}] are both {role} turns; merge them or put "
                f"{'an assistant' if role == 'user' else 'a user'} turn between"
            )
        if role == "assistant" and previous in (None, "system"):
            raise TokenmillError(f"messages[{i}] is an assistant turn before any user turn; start with a user turn")
        previous = role
    if previous == "system":
        raise TokenmillError("the conversation has a system message but no user turn")
    if add_generation_prompt and previous != "user":
        raise TokenmillError(
            f"add_generation_prompt needs the conversation to end with a user turn; it ends with {previous}"
        )


def _segments(messages: Sequence[Message], add_generation_prompt: bool) -> list[tuple[str, bool, bool]]:
    """The conversation as (text, is_special_token, is_trained) pieces, in order."""
    check_messages(messages, add_generation_prompt)
    out = [(BOS, True, False)]
    for m in messages:
        trained = m["role"] == "assistant"
        out.append((ROLE_TOKENS[m["role"]], True, False))
        out.append((m["content"], False, trained))
        out.append((END, True, trained))  # the model learns to end its turn
    if add_generation_prompt:
        out.append((ASSISTANT, True, False))
    return out


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as text, for display. Tokens come from `encode_chat`, never from this text."""
    return "".join(text for text, _, _ in _segments(messages, add_generation_prompt))


@dataclass
class ChatTokens:
    """Token ids of a conversation and, aligned with them, 1 where the token is the assistant's to
    produce (its content and its <|end|>) and 0 elsewhere. A trainer that predicts ids[t+1] from
    ids[:t+1] weights that prediction by loss_mask[t+1]."""

    ids: list[int]
    loss_mask: list[int]


def encode_chat(tokenizer: Tokenizer, messages: Sequence[Message], add_generation_prompt: bool = False) -> ChatTokens:
    ids: list[int] = []
    mask: list[int] = []
    for text, special, trained in _segments(messages, add_generation_prompt):
        piece = [tokenizer.special_ids[text]] if special else tokenizer.encode(text)
        ids += piece
        mask += [int(trained)] * len(piece)
    return ChatTokens(ids, mask)
