"""The FineWeb rules (Penedo et al. 2024, "The FineWeb Datasets"): page-level rules the
authors found, by ablation, to remove what Gopher and C4 leave behind (lists, menus, and
boilerplate repeated down a page).

Thresholds are those of datatrove's FineWebQualityFilter, with which FineWeb was built: at
least 12% of lines end in terminal punctuation, at most 67% of lines are 30 characters or
shorter, at most 1% of characters sit in duplicated lines, at most 0.3 newlines per word
(words and punctuation marks, as datatrove counts them). FineWeb ran C4's rules with the
line-level punctuation rule off, the first rule here taking its place; in tokenmill that is
`c4: {filter_no_terminal_punct: false}`.

Terminal punctuation is the Unicode Sentence_Terminal class (. ! ? 。 ।, ...), the set
datatrove's implementation lists by hand. Unlike datatrove, trailing spaces do not hide it, and
neither do closing quotes and brackets: a line ending `."` or `?)` ends in terminal
punctuation (see `text.ends_with_terminal`). datatrove removes a one-paragraph article whose
only line ends in a quotation: none of its lines, by its count, ends in punctuation.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from tokenmill.curate.filters.gopher import WEB_ONLY
from tokenmill.curate.filters.rules import RuleFilter
from tokenmill.curate.filters.text import ends_with_terminal, find_duplicates, lines, tokens


class FineWebFilter(RuleFilter):
    """Removes list-like and boilerplate-ridden pages. A threshold set to null switches its rule off."""

    name: ClassVar[str] = "fineweb"

    domains: list[str] | None = Field(default_factory=lambda: list(WEB_ONLY))
    line_punct_thr: float | None = Field(0.12, description="Least share of lines ending in terminal punctuation.")
    short_line_thr: float | None = Field(0.67, description="Most share of short lines.")
    short_line_length: int = Field(30, description="A line this long or shorter (characters) is short.")
    char_duplicates_ratio: float | None = Field(0.01, description="Most share of characters in duplicated lines.")
    new_line_ratio: float | None = Field(0.3, description="Most newlines per token.")

    def failed_rule(self, text: str) -> tuple[str, float] | None:
        """The first rule the text fails, with the measured value; None if it passes them all."""
        doc_lines = lines(text)
        n_lines = max(len(doc_lines), 1)
        if self.line_punct_thr is not None:
            ratio = sum(ends_with_terminal(line) for line in doc_lines) / n_lines
            if ratio < self.line_punct_thr:
                return "line_punct_ratio", ratio
        if self.short_line_thr is not None:
            ratio = sum(len(line) <= self.short_line_length for line in doc_lines) / n_lines
            if ratio > self.short_line_thr:
                return "short_line_ratio", ratio
        if self.char_duplicates_ratio is not None:
            ratio = find_duplicates(doc_lines)[1] / max(len(text) - text.count("\n"), 1)
            if ratio > self.char_duplicates_ratio:
                return "char_dup_ratio", ratio
        if self.new_line_ratio is not None:
            ratio = text.count("\n") / max(len(tokens(text)), 1)
            if ratio > self.new_line_ratio:
                return "new_line_ratio", ratio
        return None
