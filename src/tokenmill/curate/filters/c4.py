"""The C4 rules (Raffel et al. 2020, "Exploring the Limits of Transfer Learning", section 2.2),
as the reference code in TensorFlow Datasets (`c4_utils.py`) and datatrove's C4QualityFilter
apply them.

C4 works line by line: a line without terminal punctuation, with fewer than 3 words, with a
word over 1000 characters, mentioning JavaScript or a cookie/terms-of-use notice is removed,
and the rest of the page stays. A page is removed whole when it says "lorem ipsum", holds a
curly bracket (C4's way of dropping code), has fewer than 5 sentences left, or holds a word
from a bad-words list (when one is given; C4 used the LDNOOBW list).

Three differences from the reference code, on purpose (the first two can be switched back):

- C4's input was text extracted from HTML, one paragraph per line. Plain text is often
  wrapped at 72-80 columns, and there every line of a paragraph but the last lacks terminal
  punctuation: C4 would keep only the last line of each paragraph, a fragment. With
  `unwrap_lines`, a line that does not end a sentence and is followed by a line starting in
  lower case is judged together with it, and both are kept or removed together. On text with
  one paragraph per line nothing changes. On the built-in corpus's web domain (READMEs,
  NEWS, changelogs, copyright files: all wrapped) C4 keeps 908 kB of text with it, 479 kB
  without.
- The page keeps its blank lines and its line breaks (C4 joined the lines it kept with single
  newlines, which erases paragraphs; its input had none to lose), and a page from which
  nothing was removed is returned unchanged.
- A line ends in terminal punctuation when its last mark past closing quotes and brackets is
  a sentence terminal (`text.ends_with_terminal`, shared with FineWeb's rule), or, as in the
  reference code, when it ends in a straight quote (`"` or `'`, which keeps `the "Main Street"`
  too). The reference code stops there: it removes `.”`, `!’`, `?)` and `.»`, so that an
  article quoting in typographic quotes lost its quoted lines, and with them the sentences it
  needs to stay. A line
  trailing off in an ellipsis ("..." or "…", outside quotes) does not end a sentence, as in
  the reference code.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache
from typing import ClassVar

from pydantic import Field

from tokenmill.curate.block import BlockStats, DocumentBlock
from tokenmill.curate.filters.gopher import WEB_ONLY
from tokenmill.curate.filters.text import count_sentences, ends_with_ellipsis, ends_with_terminal
from tokenmill.sources.document import Document

# The reference code's own endings beyond sentence terminals: any line ending in a straight quote.
STRAIGHT_QUOTES = ('"', "'")

# Wikipedia-style citation marks, removed before the punctuation test: "... in 1995.[3]".
CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
EXTRA_BLANK_LINES = re.compile(r"\n[^\S\n]*(?:\n[^\S\n]*)+\n")
PAGE_RULES = ("lorem_ipsum", "curly_bracket")


class C4Filter(DocumentBlock):
    """Removes boilerplate lines (and counts them in `c4.lines_removed`), then removes pages that
    are placeholders, code or too short. Each rule has its own switch: a bool, or a number
    that null switches off."""

    name: ClassVar[str] = "c4"

    domains: list[str] | None = Field(default_factory=lambda: list(WEB_ONLY))
    # line rules
    filter_no_terminal_punct: bool = Field(
        True, description='Remove lines not ending in a sentence terminal (. ? !, also before closing quotes), or in "...".'
    )
    min_words_per_line: int | None = Field(3, description="Remove lines with fewer words.")
    max_word_length: int | None = Field(1000, description="Remove lines with a longer word (characters).")
    filter_javascript: bool = Field(True, description='Remove lines mentioning "javascript".')
    filter_policy: bool = Field(True, description="Remove lines about cookies, privacy policy or terms of use.")
    remove_citations: bool = Field(True, description='Delete citation marks such as "[1]" and "[edit]".')
    unwrap_lines: bool = Field(True, description="Judge a hard-wrapped sentence as one line, not line by line.")
    # page rules
    filter_lorem_ipsum: bool = Field(True, description='Remove pages containing "lorem ipsum".')
    filter_curly_bracket: bool = Field(True, description='Remove pages containing "{" (code).')
    min_num_sentences: int | None = Field(5, description="Remove pages with fewer sentences left.")
    bad_words: list[str] = Field(default_factory=list, description="Remove pages with any of these words.")

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        out: list[str] = []
        n_sentences = 0
        changed = False
        for unit in self._lines(doc.text):
            line = " ".join(part.strip() for part in unit)
            if not line:
                out.append("")
                continue
            reason, cleaned = self._line_rule(line)
            if reason in PAGE_RULES:
                stats.remove(doc, f"{self.name}.{reason}", line[:100])
                return None
            if reason is not None:
                stats.count(f"{self.name}.lines_removed", len(unit))
                stats.count(f"{self.name}.lines_removed.{reason}", len(unit))
                changed = True
                continue
            if cleaned != line:
                stats.count(f"{self.name}.citations_removed", len(CITATION.findall(line)))
                changed = True
                unit = [CITATION.sub("", part) for part in unit]
            if self.min_num_sentences is not None and n_sentences < self.min_num_sentences:
                n_sentences += count_sentences(cleaned)  # past the minimum, the count decides nothing
            out.extend(unit)

        if self.min_num_sentences is not None and n_sentences < self.min_num_sentences:
            stats.remove(doc, f"{self.name}.too_few_sentences", f"{n_sentences} sentences")
            return None
        text = EXTRA_BLANK_LINES.sub("\n\n", "\n".join(out)).strip("\n") if changed else doc.text
        if not text.strip():
            stats.remove(doc, f"{self.name}.no_lines_left")
            return None
        if self.bad_words:
            found = bad_words_pattern(tuple(self.bad_words)).search(text.lower())
            if found:
                stats.remove(doc, f"{self.name}.bad_words", found.group().strip())
                return None
        return replace(doc, text=text) if changed else doc

    def _lines(self, text: str) -> list[list[str]]:
        """The page's lines, each as the list of physical lines it spans: with `unwrap_lines`, a
        line that does not end a sentence and is followed by one starting in lower case is one
        line wrapped in two."""
        units: list[list[str]] = []
        for line in text.splitlines():
            if (
                self.unwrap_lines
                and units
                and line.lstrip()[:1].islower()
                and units[-1][-1].strip()
                and not ends_with_terminal(units[-1][-1])
            ):
                units[-1].append(line)
            else:
                units.append([line])
        return units

    def _line_rule(self, line: str) -> tuple[str | None, str]:
        """The rule that removes this (stripped) line, or that removes the page, and the line
        without citation marks. The order is the reference code's."""
        words = line.split()
        if self.max_word_length is not None and any(len(w) > self.max_word_length for w in words):
            return "too_long_word", line
        if self.remove_citations:
            line = CITATION.sub("", line)
        ends = ends_with_terminal(line) or line.endswith(STRAIGHT_QUOTES)
        if self.filter_no_terminal_punct and (not ends or ends_with_ellipsis(line)):
            return "no_terminal_punct", line
        if self.min_words_per_line is not None and len(words) < self.min_words_per_line:
            return "too_few_words", line
        lower = line.lower()
        if self.filter_lorem_ipsum and "lorem ipsum" in lower:
            return "lorem_ipsum", line
        if self.filter_javascript and "javascript" in lower:
            return "javascript", line
        if self.filter_curly_bracket and "{" in line:
            return "curly_bracket", line
        if self.filter_policy and any(p in lower for p in POLICY_PHRASES):
            return "policy", line
        return None, line


@lru_cache(maxsize=4)
def bad_words_pattern(words: tuple[str, ...]) -> re.Pattern[str]:
    """Any of the words, standing alone (C4 matched whole words of the lowercased page)."""
    alternatives = "|".join(re.escape(w.lower()) for w in words)
    return re.compile(rf"(?:\W|^)(?:{alternatives})(?:\W|$)")
