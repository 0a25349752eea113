"""The default heuristic filters on real prose: they keep at least 95% of article-sized cuts of
two centuries of presidential addresses (public domain, see `prose_corpus`), and still remove
every menu, spam page, copied paragraph, word salad, boilerplate page, symbol junk and code
listing made to look like a web page."""

from __future__ import annotations

from collections import Counter

import pytest
from prose_corpus import articles, negatives

from tokenmill.curate.block import BlockStats
from tokenmill.curate.config import CurateConfig
from tokenmill.sources.document import Document


def removed_by(docs: list[Document]) -> Counter[str]:
    """The rule that removed each document the default chain removes (Gopher, C4, FineWeb)."""
    config = CurateConfig()
    chain = [config.gopher_repetition, config.gopher_quality, config.c4, config.fineweb]
    reasons: Counter[str] = Counter()
    for doc in docs:
        for block in chain:
            stats = BlockStats(block.name)
            doc = block.apply(doc, stats)
            if doc is None:
                reasons.update(stats.removed)
                break
    return reasons


@pytest.fixture(scope="module")
def prose() -> list[Document]:
    return articles()


def test_defaults_keep_real_prose(prose: list[Document]) -> None:
    assert len(prose) >= 450
    reasons = removed_by(prose)
    kept = 1 - sum(reasons.values()) / len(prose)
    assert kept >= 0.95, f"kept {kept:.1%} of {len(prose)} articles; removed by {reasons.most_common()}"


def test_defaults_remove_junk_boilerplate_and_spam(prose: list[Document]) -> None:
    junk = negatives(prose)
    reasons = removed_by(junk)
    assert sum(reasons.values()) == len(junk), f"kept {len(junk) - sum(reasons.values())} of {len(junk)} negatives"


def test_n_gram_counts_by_key_match_counts_by_tuple(prose: list[Document]) -> None:
    """The n-gram figures counted from 64-bit keys equal those counted from tuples of tokens,
    the published way, on prose and on the repetitive negatives."""
    from tokenmill.curate.filters.gopher import dup_n_gram_chars, has_repeated_n_gram, top_n_gram_chars
    from tokenmill.curate.filters.text import tokens

    def by_tuple(toks: tuple[str, ...], n: int) -> tuple[int, int, bool]:
        grams = [toks[i : i + n] for i in range(len(toks) - n + 1)]
        counts = Counter(grams)
        gram, count = counts.most_common(1)[0] if counts else ((), 0)
        top = (sum(map(len, gram)) + n - 1) * count if count > 1 else 0
        seen, dup, i = set(), 0, 0
        while i < len(grams):
            if grams[i] in seen:
                dup += sum(map(len, grams[i]))
                i += n
            else:
                seen.add(grams[i])
                i += 1
        return top, dup, len(counts) < len(grams)

    for doc in prose[::10] + negatives(prose)[::3]:
        toks = tokens(doc.text)
        for n in (2, 3, 5, 8):
            assert (top_n_gram_chars(toks, n), dup_n_gram_chars(toks, n), has_repeated_n_gram(toks, n)) == by_tuple(toks, n)
