"""Main text of an HTML page, without its boilerplate, extracted with trafilatura.

The settings follow FineWeb: `favor_precision` (drop a doubtful block rather than keep menu or
footer text), no comment sections. Unlike FineWeb there is no cross-document deduplication
(trafilatura's `deduplicate` keeps a process-wide cache, so a page's text would depend on the
pages read before it) and `fast` is on: it skips the readability/justext comparison, which
doubles the cost for little change in precision mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trafilatura
from trafilatura.metadata import extract_title
from trafilatura.utils import load_html

# Part of a source's fingerprint: another extractor release may extract different text.
EXTRACTOR_VERSION = f"trafilatura {trafilatura.__version__}"

# trafilatura logs a warning for every page it finds no text in; the sources count those pages
# as skips already, and a million warnings on stderr would bury everything else.
logging.getLogger("trafilatura").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Page:
    """What is kept of an HTML page: its main text (paragraphs on separate lines) and title."""

    text: str
    title: str | None


def extract_page(html: str, url: str | None = None) -> Page | None:
    """The main text and title of `html`, or None when no main text is left."""
    # Parsed once here so that the title comes from the same tree (trafilatura copies it).
    tree = load_html(html)
    if tree is None:
        return None
    text = trafilatura.extract(
        tree,
        url=url,
        fast=True,
        favor_precision=True,
        include_comments=False,
        output_format="txt",
    )
    if not text or not text.strip():
        return None
    return Page(text=text, title=extract_title(tree))


def html_to_text(html: str, url: str | None = None) -> str | None:
    """The main text of `html` without navigation, menus, footers, scripts or styles, or None."""
    page = extract_page(html, url)
    return page.text if page else None
