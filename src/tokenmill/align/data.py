"""Alignment data: conversations and preference pairs from the common file formats.

    convs = load_conversations("alpaca.json")     # Alpaca, ShareGPT, OpenAI `messages`, prompt/completion
    prefs = load_preferences("hh.jsonl")          # prompt/chosen/rejected, HH-RLHF transcripts
    prompts = load_prompts("prompts.jsonl")       # conversations that end with a user turn (for PPO)

Files are JSON Lines (plain, .gz or .zst) or one JSON array. Each record is recognised by its
keys; a record that cannot be read is skipped and counted in a `SkipLog` under `path:LINE`, and
a file with no usable record at all is refused. Everything is rendered with the one chat
template of stage 03 (`tokenmill.tokenizer.chat`), which is also what validates a conversation.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenmill.atomic import atomic_open
from tokenmill.compression import TRUNCATION_ERRORS, open_binary
from tokenmill.errors import TokenmillError
from tokenmill.sources.document import SkipLog
from tokenmill.tokenizer.chat import ChatTokens, check_messages

# ShareGPT speaker names, as the datasets in the wild spell them.
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
    "bard": "assistant", "bing": "assistant", "model": "assistant", "system": "system",
}
# Anthropic's HH-RLHF transcripts: "\n\nHuman: ...\n\nAssistant: ..."
HH_TURN = re.compile(r"\n\n(Human|Assistant): ?")


@dataclass
class Conversation:
    """Messages {"role", "content"} with roles system (first only), user and assistant."""

    messages: list[dict]


@dataclass
class Preference:
    """A prompt (the messages before the answer, ending with a user turn) and two answers to it."""

    prompt: list[dict]
    chosen: str
    rejected: str
    meta: dict[str, Any] = field(default_factory=dict)

    def conversations(self) -> tuple[list[dict], list[dict]]:
        """The prompt completed by the chosen answer, and by the rejected one."""
        return (
            self.prompt + [{"role": "assistant", "content": self.chosen}],
            self.prompt + [{"role": "assistant", "content": self.rejected}],
        )


class BadRecord(ValueError):
    """A record that is valid JSON but not a conversation or preference; the message says why."""


# --- reading records -------------------------------------------------------------------------


def read_records(path: str | Path, skips: SkipLog) -> Iterator[tuple[str, Any]]:
    """(location, JSON value) for each record: each line of a JSON Lines file, or each element
    of a file holding one JSON array. Malformed lines are skipped into `skips`."""
    path = Path(path)
    if not path.is_file():
        raise TokenmillError(f"data file not found: {path}")
    try:
        with open_binary(path) as stream:
            data = stream.read()
    except TRUNCATION_ERRORS as e:
        raise TokenmillError(f"{path} is truncated or corrupt: {e}") from None
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        try:
            records = json.loads(data.decode("utf-8-sig"))
        except (ValueError, RecursionError) as e:
            raise TokenmillError(f"{path} is not valid JSON: {e}") from None
        for i, record in enumerate(records):
            yield f"{path}[{i}]", record
        return
    lines = data.split(b"\n")
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            yield f"{path}:{lineno}", json.loads(raw.decode("utf-8-sig" if lineno == 1 else "utf-8"))
        except (ValueError, RecursionError) as e:  # bad JSON or bad UTF-8
            skips.skip("malformed_json", f"{path}:{lineno}", str(e))


def _load(path: str | Path, parse, what: str, skips: SkipLog | None) -> list:
    own = skips is None
    skips = skips if skips is not None else SkipLog()
    out = []
    for location, record in read_records(path, skips):
        try:
            out.append(parse(record))
        except BadRecord as e:
            skips.skip(f"not_a_{what}", location, str(e))
        except TokenmillError as e:  # the chat template refused the messages
            skips.skip("invalid_conversation", location, str(e))
    if not out:
        first = next((r["examples"][0] for r in skips.summary()["skipped"].values() if r["examples"]), None)
        hint = f"; first problem at {first['location']}: {first['detail']}" if first else " (the file is empty)"
        raise TokenmillError(f"{path}: no usable {what} record{hint}")
    if own and skips.skipped:
        skips.print_summary(sys.stderr)
    return out


# --- conversations ---------------------------------------------------------------------------


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f"{what} must be text, got {type(value).__name__}")
    return value


def _messages(value: Any, what: str = "messages") -> list[dict]:
    """OpenAI-style messages, or ShareGPT turns ({"from", "value"}), as {"role", "content"} dicts."""
    if not isinstance(value, list) or not value:
        raise BadRecord(f"'{what}' must be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRecord(f"{what}[{i}] is a {type(m).__name__}, not an object")
        if "from" in m and "value" in m:
            role = SHAREGPT_ROLES.get(str(m["from"]).lower())
            if role is None:
                raise BadRecord(f"{what}[{i}] is from {m['from']!r}; known speakers: {', '.join(SHAREGPT_ROLES)}")
            out.append({"role": role, "content": _text(m["value"], f"{what}[{i}].value")})
        elif "role" in m and "content" in m:
            out.append({"role": m["role"], "content": _text(m["content"], f"{what}[{i}].content")})
        else:
            raise BadRecord(f"{what}[{i}] needs 'role' and 'content' (or ShareGPT 'from' and 'value')")
    return out


def _prompt(value: Any) -> list[dict]:
    """A prompt given as text (one user turn) or as messages."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    return _messages(value, "prompt")


def parse_conversation(record: Any) -> Conversation:
    """One record in any supported conversation format, checked against the chat template."""
    if not isinstance(record, dict):
        raise BadRecord(f"a JSON {type(record).__name__}, not an object")
    if "messages" in record:
        messages = _messages(record["messages"])
    elif "conversations" in record:
        messages = _messages(record["conversations"], "conversations")
    elif "instruction" in record:
        # Alpaca (Taori et al., 2023): the optional input follows the instruction in the user turn.
        instruction = _text(record["instruction"], "instruction")
        extra = _text(record.get("input") or "", "input")
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        if "output" not in record:
            raise BadRecord("an Alpaca record needs 'output'")
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(record["output"], "output")}]
        if record.get("system"):
            messages.insert(0, {"role": "system", "content": _text(record["system"], "system")})
    elif "prompt" in record and "completion" in record:
        completion = record["completion"]
        answer = _messages(completion, "completion") if isinstance(completion, list) else [
            {"role": "assistant", "content": _text(completion, "completion")}
        ]
        messages = _prompt(record["prompt"]) + answer
    else:
        raise BadRecord(
            f"keys {sorted(record)[:8]}: expected 'messages', 'conversations' (ShareGPT), "
            "'instruction'/'output' (Alpaca) or 'prompt'/'completion'"
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise BadRecord("no assistant turn: nothing to learn from")
    check_messages(messages)
    return Conversation(messages)


def load_conversations(path: str | Path, skips: SkipLog | None = None) -> list[Conversation]:
    """Conversations for SFT from Alpaca JSON/JSONL, ShareGPT, OpenAI `messages` or prompt/completion
    records. Bad records are counted in `skips` (printed to stderr when none is given)."""
    return _load(path, parse_conversation, "conversation", skips)


def parse_prompt(record: Any) -> list[dict]:
    """The messages of a prompt record: any conversation format whose last turn is the user's."""
    if not isinstance(record, dict):
        raise BadRecord(f"a JSON {type(record).__name__}, not an object")
    if "prompt" in record:
        messages = _prompt(record["prompt"])
    elif "messages" in record or "conversations" in record:
        messages = _messages(record.get("messages", record.get("conversations")))
    elif "instruction" in record:
        extra = _text(record.get("input") or "", "input")
        instruction = _text(record["instruction"], "instruction")
        messages = [{"role": "user", "content": f"{instruction}\n\n{extra}" if extra.strip() else instruction}]
    else:
        raise BadRecord(f"keys {sorted(record)[:8]}: expected 'prompt', 'messages' or 'instruction'")
    check_messages(messages, add_generation_prompt=True)
    return messages


def load_prompts(path: str | Path, skips: SkipLog | None = None) -> list[list[dict]]:
    """Prompts (conversations that end with a user turn) for sampling, as in PPO."""
    return _load(path, parse_prompt, "prompt", skips)


def encode_prompts(tokenizer, prompts: Sequence[Sequence[dict]], max_tokens: int) -> tuple[list[list[int]], int]:
    """The chat-template ids of each prompt, ready for the assistant's answer, keeping those of at
    most `max_tokens` tokens; and how many were too long."""
    ids = [tokenizer.encode_chat(p, add_generation_prompt=True).ids for p in prompts]
    kept = [x for x in ids if len(x) <= max_tokens]
    return kept, len(ids) - len(kept)


# --- preferences -----------------------------------------------------------------------------


def parse_hh(transcript: str, what: str) -> list[dict]:
    """An HH-RLHF transcript as messages."""
    parts = HH_TURN.split(transcript)
    if parts[0].strip() or len(parts) < 3:
        raise BadRecord(f"{what} is not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _answer(value: Any, what: str) -> str:
    """An answer given as text or as a one-message assistant list (TRL's conversational format)."""
    if isinstance(value, list):
        messages = _messages(value, what)
        if len(messages) != 1 or messages[0]["role"] != "assistant":
            raise BadRecord(f"'{what}' given as messages must be one assistant message")
        return messages[0]["content"]
    return _text(value, what)


def _split_pair(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], str, str]:
    """Two whole conversations that share every turn but the last, assistant, one."""
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise BadRecord("chosen and rejected must each end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise BadRecord("chosen and rejected differ before their last turn: no shared prompt")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def parse_preference(record: Any) -> Preference:
    if not isinstance(record, dict):
        raise BadRecord(f"a JSON {type(record).__name__}, not an object")
    if "chosen" not in record or "rejected" not in record:
        raise BadRecord(f"keys {sorted(record)[:8]}: a preference needs 'chosen' and 'rejected'")
    if "prompt" in record:
        prompt = _prompt(record["prompt"])
        chosen, rejected = _answer(record["chosen"], "chosen"), _answer(record["rejected"], "rejected")
    elif isinstance(record["chosen"], str):
        chosen_turns = parse_hh(record["chosen"], "chosen")
        prompt, chosen, rejected = _split_pair(chosen_turns, parse_hh(_text(record["rejected"], "rejected"), "rejected"))
    else:
        prompt, chosen, rejected = _split_pair(_messages(record["chosen"], "chosen"), _messages(record["rejected"], "rejected"))
    if not chosen.strip() or not rejected.strip():
        raise BadRecord("an empty answer")
    if chosen == rejected:
        raise BadRecord("chosen and rejected are the same answer")
    check_messages(prompt, add_generation_prompt=True)
    return Preference(prompt, chosen, rejected)


def load_preferences(path: str | Path, skips: SkipLog | None = None) -> list[Preference]:
    """Preference triples (prompt, chosen, rejected): `prompt` as text or messages with answers as
    text or one assistant message (TRL's formats), or whole `chosen`/`rejected` conversations
    sharing all but their last turn, as HH-RLHF transcripts or messages."""
    return _load(path, parse_preference, "preference", skips)


# --- writing and encoding --------------------------------------------------------------------


def write_jsonl(path: str | Path, records: Sequence[dict]) -> None:
    """One JSON object a line, atomically."""
    with atomic_open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def conversation_record(conversation: Conversation) -> dict:
    return {"messages": conversation.messages}


def preference_record(preference: Preference) -> dict:
    return {"prompt": preference.prompt, "chosen": preference.chosen, "rejected": preference.rejected, **preference.meta}


def encode_pair(tokenizer, preference: Preference) -> tuple[ChatTokens, ChatTokens]:
    """Ids and answer masks of prompt+chosen and prompt+rejected, in the tokenizer's chat template;
    the mask marks the answer and its end-of-turn token."""
    chosen, rejected = preference.conversations()
    return tokenizer.encode_chat(chosen), tokenizer.encode_chat(rejected)
