"""The units the heuristic filters count: tokens and words, lines, paragraphs, sentences, and
what ends a sentence.

Tokens follow the conventions of spaCy's English tokenizer, which datatrove uses for these
filters and on which their published thresholds were applied: text splits at whitespace, and
the punctuation marks before and after a word are tokens of their own (so they count against
"words with a letter"), while marks inside it are not (3.5, and/or, os.path, a@b.org, the URL
without its final period). Initialisms (e.g., U.S.) and titles (Mr.) keep their period; a run
of one mark ("--", "...", "====") is one token. Unlike spaCy, a contraction ("don't") or a
hyphenated word stays whole. A regular expression is many times faster than spaCy's
tokenizer, and on prose the two lead to the same decisions (see the parity tests).

A line ends a sentence when its last mark, past trailing spaces and any closing quotes and
brackets, is a sentence terminal: `done."`, `done.”`, `done!'`, `(done?)`, `« fini. »`,
`done.")` all do. Every rule that looks at line ends (C4's punctuation rule and its
unwrapping, FineWeb's line-punctuation ratio) asks `ends_with_terminal`. The published code
looks only at the last character: FineWeb's then finds no terminal punctuation in `."`, and
C4's takes a bare `"` or `'` for one (so `."` passes but `.”`, `?)` and `.»` do not, while
`the "Main Street"` does). A news article of one paragraph ending in a quotation was removed.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable
from functools import lru_cache

import regex

TOKEN = re.compile(
    r"\b(?:[^\W\d_]\.){2,}"  # initialisms: e.g. i.e. U.S.
    r"|\b(?:Mr|Mrs|Ms|Dr|Prof|St|Jr|Sr|vs)\."  # titles, which would otherwise end a sentence
    r"|[-/]*\w(?:\S*\w)?"  # first to last word character of a space-free run: 3.5, a@b.org, --help, /etc
    r"|([^\w\s])\1*"  # any other mark; a run of the same mark is one token: ( -- ... ====
)
# spaCy's infixes: a hyphen or one of : < > = / between a letter or digit and a letter, an
# arithmetic sign between digits. "co-maintained" and "src/main" split, "GPL-2" does not.
INFIX = re.compile(r"(?<=[^\W_])(-+|[:<>=/])(?=[^\W\d_])|(?<=\d)([-+*^])(?=\d)")
# The Unicode property Sentence_Terminal: . ! ? and their kin in other scripts (。 ። ।, ...).
TERMINAL = regex.compile(r"\p{Sentence_Terminal}")
ELLIPSES = ("...", "…")
# What may follow a sentence's terminal mark and still close it: the closing quotes of every
# convention (English ” ’, French and German » « “ ‘, CJK 」 』), straight quotes, and closing
# brackets. Not "}" (code, which C4 removes on its own account).
CLOSERS = "\"'”’»«“‘›‹」』）)]］〉》】〕"
PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")


@lru_cache(maxsize=8)
def tokens(text: str) -> tuple[str, ...]:
    """Words and punctuation marks, in order. Kept for the last few texts, so that the filters
    of a chain split a document once between them."""
    return tuple(split_tokens(text))


def split_tokens(text: str) -> list[str]:
    """`tokens`, not kept: for pieces of a document (a line), which no other filter asks for."""
    matches = list(TOKEN.finditer(text))
    out = [m.group() for m in matches]
    # Infixes are searched in the whole text at once, and only the tokens holding a match are
    # split: every infix inside a token is also a match in the text (its context is the same).
    hits = [m.start() for m in INFIX.finditer(text)]
    if hits:
        starts = [m.start() for m in matches]
        for i in sorted({bisect_right(starts, p) - 1 for p in hits} - {-1}, reverse=True):
            token = out[i]
            if "://" not in token and INFIX.search(token):
                out[i : i + 1] = [part for part in INFIX.split(token) if part]
    return out


def is_word(token: str) -> bool:
    """A word or a number, not a mark (only a word token ends in a word character)."""
    return token[-1].isalnum() or token[-1] == "_"


def is_terminal(token: str) -> bool:
    return len(token) == 1 and TERMINAL.match(token) is not None


def ends_with_terminal(line: str) -> bool:
    """Whether the line ends a sentence: its last mark, past trailing spaces and closing quotes
    and brackets, is a sentence terminal. "…" ends one as "..." does (its last mark is ".")."""
    core = line.rstrip().rstrip(CLOSERS)
    return bool(core) and (TERMINAL.match(core[-1]) is not None or core[-1] == "…")


def ends_with_ellipsis(line: str) -> bool:
    """Whether the line trails off: "...", "…" as its last marks, not inside quotes."""
    return line.rstrip().endswith(ELLIPSES)


@lru_cache(maxsize=8)
def lines(text: str) -> tuple[str, ...]:
    """The lines that hold more than whitespace (a blank line separates, it says nothing)."""
    return tuple(line for line in text.splitlines() if line.strip())


@lru_cache(maxsize=8)
def paragraphs(text: str) -> tuple[str, ...]:
    """Blocks separated by one or more blank lines."""
    return tuple(p for p in PARAGRAPH_BREAK.split(text.strip()) if p)


def count_sentences(text: str) -> int:
    """Sentences as spaCy's rule-based sentencizer counts them: a new one starts at the first
    word after a sentence terminal, so "e.g." and "3.5" end nothing."""
    n, after_terminal = 0, True
    for token in split_tokens(text):
        if is_terminal(token):
            after_terminal = True
        elif after_terminal and is_word(token):
            n += 1
            after_terminal = False
    return n


def find_duplicates(items: Iterable[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their characters (first copies not counted)."""
    seen: set[str] = set()
    n = chars = 0
    for item in items:
        if item in seen:
            n += 1
            chars += len(item)
        else:
            seen.add(item)
    return n, chars
