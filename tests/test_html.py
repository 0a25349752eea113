"""html_to_text / extract_page: main text kept, boilerplate dropped, None when nothing is left."""

from __future__ import annotations

from tokenmill.sources.html import Page, extract_page, html_to_text

PARAGRAPHS = [
    "The harbour authority confirmed on Monday that the old lighthouse will be restored next year, "
    "with the work paid for by a grant from the national heritage fund.",
    "Engineers will first repair the stone tower, then replace the lantern, which has not been lit "
    "since the automatic beacon on the pier took over its work in the 1980s.",
]
PAGE = f"""<!DOCTYPE html><html><head><title>Lighthouse to be restored - Coast News</title>
<style>.banner {{ display: none; }}</style><script>window.adSlot = "renderAdvertNow";</script></head>
<body><div class="cookie-notice">This site uses cookies. Accept?</div>
<nav><a href="/">Front page</a> | <a href="/sport">Sport results</a> | <a href="/weather">Weather today</a></nav>
<article><h1>Lighthouse to be restored</h1>{"".join(f"<p>{p}</p>" for p in PARAGRAPHS)}</article>
<section class="comments"><h2>Comments</h2><div class="comment"><p>First! Great news for the town, I love it.</p></div></section>
<footer>Coast News Ltd, all rights reserved</footer></body></html>"""


def test_main_text_without_boilerplate() -> None:
    assert extract_page(PAGE, "https://coast.example/lighthouse") == Page(
        text="\n".join(["Lighthouse to be restored", *PARAGRAPHS]), title="Lighthouse to be restored"
    )
    text = html_to_text(PAGE)
    for boilerplate in ("cookies", "Front page", "Sport results", "renderAdvertNow", "display", "First!", "rights reserved"):
        assert boilerplate not in text


def test_nothing_left() -> None:
    assert html_to_text("") is None
    assert html_to_text("<html><body><nav><a href='/'>Home</a><a href='/a'>About</a></nav></body></html>") is None
    assert html_to_text("<html><head><script>var only = 'code';</script></head><body></body></html>") is None
