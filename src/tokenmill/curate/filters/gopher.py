"""The Gopher rules (Rae et al. 2021, "Scaling Language Models", appendix A.1.1 and table A1):
repetition removal and quality filtering, as MassiveText applied them to web text.

The rules and thresholds are the paper's, measured as datatrove measures them (the FineWeb
pipeline ran these filters with the same thresholds). Where we differ, on purpose:

- Lines are the non-blank lines, paragraphs are separated by lines holding only whitespace
  too, and "\\r\\n" ends a line: blank lines would otherwise dilute the bullet and ellipsis
  ratios of a spaced-out list.
- A top n-gram counts only if it occurs more than once: in a ten-word text every 2-gram is
  "the most frequent" and fills more than 20% of the characters, yet nothing repeats. Such a
  text is for the word-count rule to remove, under that rule's name.
- "80% of words contain an alphabetic character" counts the words between spaces, as the
  paper says and dolma does; datatrove counts every punctuation mark as a word of its own,
  which puts ordinary technical prose (a README with parentheses, paths and backquotes)
  under 80%: on the built-in corpus it removed 14 of 24 READMEs, this count removes 1.
- Stop words are matched case-insensitively ("The" is "the"), so a text in capitals is not
  taken for a text without stop words; "*" also marks a bullet, as in Markdown lists (dolma
  counts it too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from pydantic import Field

from tokenmill.curate.filters.rules import RuleFilter
from tokenmill.curate.filters.text import (
    ELLIPSES,
    ends_with_ellipsis,
    find_duplicates,
    is_word,
    lines,
    paragraphs,
    tokens,
)

# These rules were tuned on Common Crawl; on code, manual pages or licence texts they would
# remove good text (code is mostly symbols and repeated lines by nature).
WEB_ONLY = ["web"]
STOP_WORDS = ["the", "be", "to", "of", "and", "that", "have", "with"]
BULLETS = ("•", "‣", "◦", "●", "▪", "-", "*")


class GopherRepetitionFilter(RuleFilter):
    """Removes documents that repeat themselves: duplicated lines and paragraphs, one n-gram
    filling the text, or many duplicated n-grams. A threshold set to null switches its rule off."""

    name: ClassVar[str] = "gopher_repetition"

    domains: list[str] | None = Field(default_factory=lambda: list(WEB_ONLY))
    dup_para_frac: float | None = Field(0.30, description="Most duplicated paragraphs, as a share of paragraphs.")
    dup_para_char_frac: float | None = Field(0.20, description="Most characters in duplicated paragraphs.")
    dup_line_frac: float | None = Field(0.30, description="Most duplicated lines, as a share of lines.")
    dup_line_char_frac: float | None = Field(0.20, description="Most characters in duplicated lines.")
    top_n_grams: dict[int, float] = Field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16},
        description="n: most characters in the most frequent n-gram (counted at each occurrence).",
    )
    dup_n_grams: dict[int, float] = Field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10},
        description="n: most characters in repeated occurrences of n-grams.",
    )

    def failed_rule(self, text: str) -> tuple[str, float] | None:
        """The first rule the text fails, with the measured value; None if it passes them all."""
        size = max(len(text), 1)
        for unit, parts, frac_max, char_frac_max in (
            ("para", paragraphs(text), self.dup_para_frac, self.dup_para_char_frac),
            ("line", lines(text), self.dup_line_frac, self.dup_line_char_frac),
        ):
            n_dup, dup_chars = find_duplicates(parts)
            if frac_max is not None and parts and n_dup / len(parts) > frac_max:
                return f"dup_{unit}_frac", n_dup / len(parts)
            if char_frac_max is not None and dup_chars / size > char_frac_max:
                return f"dup_{unit}_char_frac", dup_chars / size

        toks = tokens(text)
        for n, frac_max in sorted(self.top_n_grams.items()):
            frac = top_n_gram_chars(toks, n) / size
            if frac > frac_max:
                return f"top_{n}_gram", frac
        if self.dup_n_grams and not has_repeated_n_gram(toks, min(self.dup_n_grams)):
            return None  # no n-gram repeats, so no longer one does either: most prose ends here
        for n, frac_max in sorted(self.dup_n_grams.items()):
            frac = dup_n_gram_chars(toks, n) / size
            if frac > frac_max:
                return f"dup_{n}_gram", frac
        return None


# N-grams are counted as 64-bit keys: each token's (cached) string hash, combined over the
# n positions by a multiply-add in numpy, so that no tuple of strings is built. Two distinct
# n-grams of one document share a key with a chance of about 1 in 10^15.
KEY_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


def n_gram_keys(toks: Sequence[str], n: int) -> np.ndarray:
    """One key per n-gram position (len(toks) - n + 1 of them)."""
    count = len(toks) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    h = np.fromiter(map(hash, toks), dtype=np.int64, count=len(toks)).view(np.uint64)
    keys = h[:count].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            keys *= KEY_MULTIPLIER
            keys += h[k : k + count]
    return keys


def top_n_gram_chars(toks: Sequence[str], n: int) -> int:
    """Characters covered by every occurrence of the most frequent n-gram (written with single
    spaces), or 0 if no n-gram occurs twice. Of n-grams equally frequent, the first to occur."""
    keys = n_gram_keys(toks, n)
    if not len(keys):
        return 0
    _, first, counts = np.unique(keys, return_index=True, return_counts=True)
    count = int(counts.max())
    if count <= 1:
        return 0
    at = int(first[counts == count].min())
    return (sum(map(len, toks[at : at + n])) + n - 1) * count


def has_repeated_n_gram(toks: Sequence[str], n: int) -> bool:
    keys = n_gram_keys(toks, n)
    return len(np.unique(keys)) < len(keys)


def dup_n_gram_chars(toks: Sequence[str], n: int) -> int:
    """Characters of the n-grams that repeat an earlier one, scanning left to right and
    stepping over a repeat so that overlapping repeats are not counted twice."""
    keys = n_gram_keys(toks, n)
    if not len(keys):
        return 0
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    # Only occurrences of n-grams that occur more than once can repeat or be repeated; the
    # scan visits them alone, in order, remembering up to where a repeat stepped over.
    candidates = np.flatnonzero(counts[inverse] > 1).tolist()
    if not candidates:
        return 0
    lengths = np.fromiter(map(len, toks), dtype=np.int64, count=len(toks))
    ends = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    gram = inverse.tolist()
    seen: set[int] = set()
    chars = free = 0
    for i in candidates:
        if i < free:
            continue
        if gram[i] in seen:
            chars += ends[i + n] - ends[i]
            free = i + n
        else:
            seen.add(gram[i])
    return chars


class GopherQualityFilter(RuleFilter):
    """Removes documents that do not look like prose: too short or too long, odd word lengths,
    many '#' or ellipses, lists of bullets, few words with letters, no English stop words.
    A threshold set to null switches its rule off."""

    name: ClassVar[str] = "gopher_quality"

    domains: list[str] | None = Field(default_factory=lambda: list(WEB_ONLY))
    min_doc_words: int | None = 50
    max_doc_words: int | None = 100_000
    min_avg_word_length: float | None = 3
    max_avg_word_length: float | None = 10
    max_symbol_word_ratio: float | None = Field(0.1, description="Most '#', and most ellipses, per token.")
    max_bullet_lines_ratio: float | None = Field(0.9, description="Most lines starting with a bullet.")
    max_ellipsis_lines_ratio: float | None = Field(0.3, description="Most lines ending with an ellipsis.")
    min_alpha_words_ratio: float | None = Field(0.8, description="Least share of words with a letter.")
    min_stop_words: int | None = Field(2, description="Least number of distinct stop words present.")
    stop_words: list[str] = Field(default_factory=lambda: list(STOP_WORDS))

    def failed_rule(self, text: str) -> tuple[str, str] | None:
        """The first rule the text fails, with what was measured; None if it passes them all."""
        toks = tokens(text)
        words = [t for t in toks if is_word(t)]
        n = len(words)
        if (self.min_doc_words is not None and n < self.min_doc_words) or (
            self.max_doc_words is not None and n > self.max_doc_words
        ):
            return "word_count", f"{n} words"

        mean = sum(map(len, words)) / max(n, 1)
        if (self.min_avg_word_length is not None and mean < self.min_avg_word_length) or (
            self.max_avg_word_length is not None and mean > self.max_avg_word_length
        ):
            return "mean_word_length", f"{mean:.2f}"

        n_toks = max(len(toks), 1)
        if self.max_symbol_word_ratio is not None:
            if text.count("#") / n_toks > self.max_symbol_word_ratio:
                return "hash_ratio", f"{text.count('#') / n_toks:.3f}"
            n_ellipses = sum(text.count(e) for e in ELLIPSES)
            if n_ellipses / n_toks > self.max_symbol_word_ratio:
                return "ellipsis_ratio", f"{n_ellipses / n_toks:.3f}"

        doc_lines = lines(text)
        n_lines = max(len(doc_lines), 1)
        if self.max_bullet_lines_ratio is not None:
            ratio = sum(line.lstrip().startswith(BULLETS) for line in doc_lines) / n_lines
            if ratio > self.max_bullet_lines_ratio:
                return "bullet_lines", f"{ratio:.3f}"
        if self.max_ellipsis_lines_ratio is not None:
            ratio = sum(ends_with_ellipsis(line) for line in doc_lines) / n_lines
            if ratio > self.max_ellipsis_lines_ratio:
                return "ellipsis_lines", f"{ratio:.3f}"

        if self.min_alpha_words_ratio is not None:
            spaced = text.split()
            ratio = sum(any(c.isalpha() for c in w) for w in spaced) / max(len(spaced), 1)
            if ratio < self.min_alpha_words_ratio:
                return "alpha_words", f"{ratio:.3f}"

        if self.min_stop_words is not None:
            found = {w.lower() for w in words} & {s.lower() for s in self.stop_words}
            if len(found) < self.min_stop_words:
                return "stop_words", ", ".join(sorted(found)) or "none"
        return None
