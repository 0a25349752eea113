"""A model's own Jinja chat template, rendered as Hugging Face `transformers` renders it.

A Hub model ships its chat format as a Jinja program (`chat_template` in tokenizer_config.json,
or chat_template.jinja). The same text must come out here as from `apply_chat_template`, or the
model sees a format it was never trained on, so the environment is transformers' own: sandboxed
and immutable (the template is someone else's code), `trim_blocks`/`lstrip_blocks`,
`raise_exception`, `strftime_now`, a `tojson` that does not escape HTML, `loopcontrols`, and the
`{% generation %}` block that marks what the assistant writes. transformers is a test-only peer,
so this is written here rather than imported.

    template = ChatTemplate(source, {"bos_token": "<s>", "eos_token": "</s>"})
    text, spans = template.render(messages, add_generation_prompt=True)
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tokenmill.errors import TokenmillError

TEMPLATE_FILE = "chat_template.jinja"
GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
# While a render runs: the blocks streamed so far and the generation spans found (per thread or task).
_TRACKING: ContextVar[tuple[list[str], list[tuple[int, int]]] | None] = ContextVar("chat_template_tracking", default=None)


class GenerationBlocks(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body and records where it went.

    The template streams its output in blocks; the offset of a generation block is the length of
    everything streamed before it, which `ChatTemplate.render` keeps in `_TRACKING`."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_generation", []), [], [], body).set_lineno(lineno)

    def _generation(self, caller) -> str:
        text = caller()
        state = _TRACKING.get()
        if state is not None:
            rendered, spans = state
            start = sum(len(block) for block in rendered)
            spans.append((start, start + len(text)))
        return text


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; a prompt wants the JSON as written.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _Namespace(jinja2.utils.Namespace):
    """Jinja's `namespace`, refusing underscore names so a template cannot reach Python internals."""

    def __init__(*args, **kwargs) -> None:  # Jinja's signature trick: `namespace(self=...)` still works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name, value) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r}")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception, strftime_now=_strftime_now, namespace=_Namespace,
        dict=lambda *args, **kwargs: dict(*args, **kwargs),
    )
    return env


def read_template(folder: Path, config: Mapping[str, Any]) -> str | None:
    """The folder's chat template: tokenizer_config.json's `chat_template` (a string, or a list of
    named templates of which "default" is the chat one), else chat_template.jinja; None if neither."""
    value = config.get("chat_template")
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        if "default" not in named:
            raise TokenmillError(
                f"{folder / 'tokenizer_config.json'} has chat templates {sorted(map(str, named))} but none named 'default'"
            )
        value = named["default"]
    if value is not None and not isinstance(value, str):
        raise TokenmillError(f"{folder / 'tokenizer_config.json'}: chat_template must be text or a list of named templates")
    if value is None and (folder / TEMPLATE_FILE).is_file():
        value = (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    return value


class ChatTemplate:
    """A compiled chat template and the special tokens it is given (`bos_token`, `eos_token`, ...)."""

    def __init__(self, source: str, special_tokens: Mapping[str, str], where: str = "the chat template") -> None:
        self.source = source
        self.special_tokens = dict(special_tokens)
        self.where = where
        self.has_generation_blocks = GENERATION_TAG.search(source) is not None
        self._env = _environment()
        try:
            self._template = self._env.from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as e:
            raise TokenmillError(f"{where} is not valid Jinja (line {e.lineno}): {e.message}") from None

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> tuple[str, list[tuple[int, int]]]:
        """The conversation as text, and the character spans of its `{% generation %}` blocks."""
        # As transformers does: plain dicts, and a key whose value is None is absent (templates test `is defined`).
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        rendered: list[str] = []
        spans: list[tuple[int, int]] = []
        token = _TRACKING.set((rendered, spans))
        try:
            for block in self._template.generate(
                messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            ):
                rendered.append(block)  # noqa: PERF402 - block by block: a generation block's offset is what came before
        except (jinja2.exceptions.TemplateError, TypeError, ValueError) as e:
            raise TokenmillError(f"{self.where} refused the conversation: {e}") from None
        finally:
            _TRACKING.reset(token)
        return "".join(rendered), spans
