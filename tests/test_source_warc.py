"""WarcSource: pages from WARC responses, text from WET conversions, recovery from bad records."""

from __future__ import annotations

import gzip
import io
import re
from collections import Counter
from pathlib import Path

import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from tokenmill.sources.document import SkipLog
from tokenmill.sources.warc import WarcSource

DATE = "2024-05-01T12:00:00Z"

TITLE = "River otters return to the valley"
PARAGRAPHS = [
    "After an absence of nearly forty years, river otters have been sighted again along the upper "
    "reaches of the valley river, according to a survey published this week by the regional wildlife trust.",
    "Volunteers recorded fresh tracks and spraints at eleven of the fifteen monitoring stations, a result "
    "the trust describes as the clearest sign yet that the cleanup of the old mill ponds has worked.",
    "The trust now plans to extend the survey downstream next spring and is asking landowners to report "
    "any sightings, especially of young animals, which would confirm that the otters are breeding.",
]
ARTICLE = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Otters | Nature Weekly</title>
<style>body {{ font-family: sans-serif; }} .menu {{ color: red; }}</style>
<script>var trackingPixel = "loadAnalyticsNow"; function showBanner() {{ return 1; }}</script>
</head><body>
<div id="cookie-banner" class="cookie-consent">We use cookies to improve your experience. Accept all cookies?</div>
<header><nav class="menu"><ul><li><a href="/">Home</a></li><li><a href="/news">News Section</a></li>
<li><a href="/about">About Us Page</a></li><li><a href="/contact">Contact Form</a></li></ul></nav></header>
<div class="container">
<aside class="sidebar"><h3>Trending Stories</h3><ul><li><a href="/a">Ten celebrity diets ranked</a></li>
<li><a href="/b">Stock tips for summer</a></li></ul></aside>
<main><article><h1>{TITLE}</h1>{"".join(f"<p>{p}</p>" for p in PARAGRAPHS)}</article></main>
</div>
<footer class="site-footer"><p>Copyright 2024 Nature Weekly Media Group. All rights reserved.</p>
<a href="/privacy">Privacy Policy</a></footer>
<script>document.write("injectedByScript");</script>
</body></html>"""
BOILERPLATE = [
    "cookies", "Home", "News Section", "About Us", "Contact Form", "Trending", "celebrity", "Stock tips",
    "Copyright", "Privacy Policy", "trackingPixel", "loadAnalyticsNow", "injectedByScript", "font-family",
    "Nature Weekly",
]  # fmt: skip
NAV_ONLY = '<html><body><nav><ul><li><a href="/">Home</a></li><li><a href="/a">About</a></li></ul></nav></body></html>'
WET_TEXT = "Plain text of a page, as Common Crawl's WET files hold it.\nA second line of that text."


def record(kind: str, uri: str, gz: bool, payload: bytes = b"", http: StatusAndHeaders | None = None, rid: str = "") -> bytes:
    """One WARC record as the bytes WARCWriter writes (one gzip member when `gz`)."""
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gz)
    headers = {"WARC-Date": DATE}
    if rid:
        headers["WARC-Record-ID"] = f"<{rid}>"
    content_type = "text/plain" if kind == "conversion" else ""
    writer.write_record(
        writer.create_warc_record(
            uri, kind, payload=io.BytesIO(payload), http_headers=http, warc_headers_dict=headers, warc_content_type=content_type
        )
    )
    return out.getvalue()


def response(uri: str, gz: bool, body: bytes, rid: str = "", ctype: str = "text/html; charset=utf-8", status: str = "200 OK") -> bytes:
    http = StatusAndHeaders(status, [("Content-Type", ctype)], protocol="HTTP/1.1")
    return record("response", uri, gz, body, http, rid)


def warcinfo(gz: bool) -> bytes:
    out = io.BytesIO()
    writer = WARCWriter(out, gzip=gz)
    writer.write_record(writer.create_warcinfo_record("test.warc", {"software": "tokenmill tests"}))
    return out.getvalue()


def request(uri: str, gz: bool) -> bytes:
    http = StatusAndHeaders("GET /otters HTTP/1.1", [("Host", "example.org")], is_http_request=True)
    return record("request", uri, gz, http=http)


def page(i: int) -> bytes:
    return (
        f"<html><head><title>Page {i}</title></head><body><nav><a href='/'>Home</a></nav><article>"
        f"<p>This is the first paragraph of test page number {i}, long enough to count as main text.</p>"
        f"<p>The second paragraph of page {i} says something else, again in a full and ordinary sentence.</p>"
        "</article><footer>Footer of the site, all rights reserved.</footer></body></html>"
    ).encode()


def page_text(i: int) -> str:
    return (
        f"This is the first paragraph of test page number {i}, long enough to count as main text.\n"
        f"The second paragraph of page {i} says something else, again in a full and ordinary sentence."
    )


def read(*paths: Path, **options) -> tuple[list, SkipLog]:
    skips = SkipLog()
    docs = list(WarcSource(paths=[str(p) for p in paths], **options).documents(skips))
    return docs, skips


def locations(skips: SkipLog, reason: str) -> list[str]:
    return [e["location"] for e in skips.summary()["skipped"][reason]["examples"]]


@pytest.mark.parametrize("gz", [False, True], ids=["warc", "warc.gz"])
def test_archive_with_every_kind_of_record(tmp_path: Path, gz: bool) -> None:
    url = "https://example.org/otters"
    parts = [
        warcinfo(gz),
        request(url, gz),
        response(url, gz, ARTICLE.encode(), rid="urn:uuid:article"),
        response("https://example.org/logo.png", gz, b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", ctype="image/png"),
        response("https://example.org/gone", gz, b"<html><body>Not found</body></html>", status="404 Not Found"),
        response("https://example.org/menu", gz, NAV_ONLY.encode()),
        record("conversion", url, gz, WET_TEXT.encode(), rid="urn:uuid:wet"),
    ]
    path = tmp_path / ("crawl.warc.gz" if gz else "crawl.warc")
    path.write_bytes(b"".join(parts))
    offsets = [sum(map(len, parts[:i])) for i in range(len(parts))]

    docs, skips = read(path)

    assert [d.id for d in docs] == ["urn:uuid:article", "urn:uuid:wet"]
    article, wet = docs
    assert article.text == "\n".join([TITLE, *PARAGRAPHS])
    for boilerplate in BOILERPLATE:
        assert boilerplate not in article.text
    assert article.source == "web"
    assert article.meta == {"location": f"{path}@{offsets[2]}", "url": url, "date": DATE, "format": "html", "title": TITLE}
    assert wet.text == WET_TEXT
    assert wet.meta == {"location": f"{path}@{offsets[6]}", "url": url, "date": DATE, "format": "wet"}
    assert skips.skipped == Counter({"not_html": 1, "http_status": 1, "no_main_text": 1})
    assert locations(skips, "not_html") == [f"{path}@{offsets[3]}"]
    assert locations(skips, "http_status") == [f"{path}@{offsets[4]}"]
    assert locations(skips, "no_main_text") == [f"{path}@{offsets[5]}"]
    assert not skips.repaired


def corrupt_header(part: bytes, gz: bool, how: str) -> bytes:
    """`part` with its WARC header spoiled: the version line, or a Content-Length that is no number."""
    plain = gzip.decompress(part) if gz else part
    if how == "version_line":
        plain = plain.replace(b"WARC/1.0\r\n", b"\x00GARBAGE~~\r\n", 1)
    else:
        plain = re.sub(rb"Content-Length: \d+", b"Content-Length: 12x", plain, count=1)
    return gzip.compress(plain) if gz else plain


@pytest.mark.parametrize("gz", [False, True], ids=["warc", "warc.gz"])
@pytest.mark.parametrize("how", ["version_line", "content_length"])
def test_broken_record_between_good_ones(tmp_path: Path, gz: bool, how: str) -> None:
    parts = [response(f"https://example.org/{i}", gz, page(i), rid=f"urn:uuid:page-{i}") for i in range(3)]
    parts[1] = corrupt_header(parts[1], gz, how)
    path = tmp_path / ("broken.warc.gz" if gz else "broken.warc")
    path.write_bytes(b"".join(parts))

    docs, skips = read(path)

    assert [(d.id, d.text) for d in docs] == [("urn:uuid:page-0", page_text(0)), ("urn:uuid:page-2", page_text(2))]
    assert docs[1].meta["location"] == f"{path}@{len(parts[0]) + len(parts[1])}"
    assert skips.skipped == Counter({"broken_record": 1})
    assert locations(skips, "broken_record") == [f"{path}@{len(parts[0])}"]


def test_damaged_gzip_member_is_skipped(tmp_path: Path) -> None:
    parts = [response(f"https://example.org/{i}", True, page(i), rid=f"urn:uuid:page-{i}") for i in range(3)]
    middle = bytearray(parts[1])
    middle[40:80] = bytes(b ^ 0x5A for b in middle[40:80])  # inside the deflate data
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(parts[0] + bytes(middle) + parts[2])

    docs, skips = read(path)

    assert [d.id for d in docs] == ["urn:uuid:page-0", "urn:uuid:page-2"]
    assert skips.skipped == Counter({"broken_record": 1})
    assert locations(skips, "broken_record") == [f"{path}@{len(parts[0])}"]


def test_first_record_broken(tmp_path: Path) -> None:
    parts = [response(f"https://example.org/{i}", False, page(i), rid=f"urn:uuid:page-{i}") for i in range(2)]
    path = tmp_path / "first.warc"
    path.write_bytes(corrupt_header(parts[0], False, "version_line") + parts[1])

    docs, skips = read(path)

    assert [d.id for d in docs] == ["urn:uuid:page-1"]
    assert locations(skips, "broken_record") == [f"{path}@0"]


@pytest.mark.parametrize("gz", [False, True], ids=["warc", "warc.gz"])
@pytest.mark.parametrize("cut", ["payload", "header"])
def test_truncated_file_keeps_earlier_records(tmp_path: Path, gz: bool, cut: str) -> None:
    parts = [response(f"https://example.org/{i}", gz, page(i), rid=f"urn:uuid:page-{i}") for i in range(3)]
    keep = len(parts[2]) // 2 if cut == "payload" else 40
    path = tmp_path / ("cut.warc.gz" if gz else "cut.warc")
    path.write_bytes(parts[0] + parts[1] + parts[2][:keep])

    docs, skips = read(path)

    assert [d.id for d in docs] == ["urn:uuid:page-0", "urn:uuid:page-1"]
    assert skips.skipped == Counter({"truncated_file": 1})
    assert locations(skips, "truncated_file") == [f"{path}@{len(parts[0]) + len(parts[1])}"]


def test_whole_file_gzip(tmp_path: Path) -> None:
    """A .warc gzipped as one member (by `gzip`, not a WARC writer) reads the same; its
    locations are offsets in the decompressed file, and a cut-off end is still reported."""
    parts = [response(f"https://example.org/{i}", False, page(i), rid=f"urn:uuid:page-{i}") for i in range(3)]
    whole = gzip.compress(b"".join(parts))
    path = tmp_path / "whole.warc.gz"
    path.write_bytes(whole)

    docs, skips = read(path)

    assert [d.meta["location"] for d in docs] == [f"{path}@{sum(map(len, parts[:i]))}" for i in range(3)]
    assert not skips.skipped

    path.write_bytes(whole[: len(whole) - 20])
    docs, skips = read(path)
    assert [d.id for d in docs] == ["urn:uuid:page-0", "urn:uuid:page-1"]
    assert skips.skipped == Counter({"truncated_file": 1})


def test_charset_limit_size_and_folders(tmp_path: Path) -> None:
    latin = page(1).replace(b"first paragraph", "first paragraph \u2019caf\u00e9\u2019".encode("cp1252"))
    bad_utf8 = page(2).replace(b"first paragraph", b"first \xff paragraph")
    parts = [
        response("https://example.org/1", False, latin, rid="urn:uuid:latin", ctype="text/html; charset=ISO-8859-1"),
        response("https://example.org/2", False, bad_utf8, rid="urn:uuid:bad-utf8", ctype="text/html"),
        response("https://example.org/3", False, page(3) * 40, rid="urn:uuid:large"),
    ]
    folder = tmp_path / "crawl"
    folder.mkdir()
    (folder / "a.warc").write_bytes(b"".join(parts))
    (folder / "b.wet.gz").write_bytes(record("conversion", "https://example.org/", True, WET_TEXT.encode(), rid="urn:uuid:w"))
    (folder / "notes.txt").write_text("not an archive")

    docs, skips = read(folder, max_doc_bytes=5000)

    assert [d.id for d in docs] == ["urn:uuid:latin", "urn:uuid:bad-utf8", "urn:uuid:w"]
    assert docs[0].text.startswith("This is the first paragraph \u2019caf\u00e9\u2019 of test page number 1")
    assert "first \ufffd paragraph" in docs[1].text
    assert skips.skipped == Counter({"too_large": 1})
    assert skips.repaired == Counter({"invalid_utf8": 1})

    docs, _ = read(folder, limit=2)
    assert [d.id for d in docs] == ["urn:uuid:latin", "urn:uuid:bad-utf8"]


def test_fingerprint_follows_the_files(tmp_path: Path) -> None:
    path = tmp_path / "a.warc"
    path.write_bytes(response("https://example.org/1", False, page(1)))
    source = WarcSource(paths=[str(path)])
    before = source.fingerprint()
    assert source.fingerprint() == before
    path.write_bytes(response("https://example.org/1", False, page(2)) * 2)
    assert source.fingerprint() != before
    assert WarcSource(paths=[str(path)], domain="news").fingerprint() != source.fingerprint()


def pages(gz: bool, n: int = 3) -> list[bytes]:
    return [response(f"https://example.org/{i}", gz, page(i), rid=f"urn:uuid:page-{i}") for i in range(n)]


def edit_plain(part: bytes, gz: bool, old: bytes, new: bytes) -> bytes:
    plain = gzip.decompress(part) if gz else part
    assert old in plain
    plain = plain.replace(old, new, 1)
    return gzip.compress(plain) if gz else plain


@pytest.mark.parametrize("gz", [False, True], ids=["warc", "warc.gz"])
@pytest.mark.parametrize(
    "where", ["warc_header", "version_line", "http_header", "many_http_headers", "many_warc_headers"]
)
def test_oversized_header_skips_the_record(tmp_path: Path, gz: bool, where: str) -> None:
    parts = pages(gz)
    long = b"a" * 200_000
    if where == "warc_header":
        parts[1] = edit_plain(parts[1], gz, b"WARC/1.0\r\n", b"WARC/1.0\r\nWARC-Padding: " + long + b"\r\n")
    elif where == "version_line":
        parts[1] = edit_plain(parts[1], gz, b"WARC/1.0\r\n", b"WARC/1.0" + long + b"\r\n")
    elif where == "many_warc_headers":
        many = b"".join(b"WARC-Padding-%d: x\r\n" % i for i in range(2000))
        parts[1] = edit_plain(parts[1], gz, b"WARC/1.0\r\n", b"WARC/1.0\r\n" + many)
    else:
        extra = [("Set-Cookie", "a" * 200_000)] if where == "http_header" else [(f"X-Padding-{i}", "x") for i in range(2000)]
        http = StatusAndHeaders("200 OK", [("Content-Type", "text/html"), *extra], protocol="HTTP/1.1")
        parts[1] = record("response", "https://example.org/1", gz, page(1), http, "urn:uuid:page-1")
    path = tmp_path / ("big.warc.gz" if gz else "big.warc")
    path.write_bytes(b"".join(parts))

    docs, skips = read(path)

    assert [(d.id, d.text) for d in docs] == [("urn:uuid:page-0", page_text(0)), ("urn:uuid:page-2", page_text(2))]
    assert skips.skipped == Counter({"oversized_header": 1})
    assert locations(skips, "oversized_header") == [f"{path}@{len(parts[0])}"]


def test_header_line_running_to_the_end_of_the_file(tmp_path: Path) -> None:
    parts = pages(False, 2)
    tail = b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: https://example.org/" + b"a" * 3_000_000
    path = tmp_path / "cut.warc"
    path.write_bytes(b"".join(parts) + tail)

    docs, skips = read(path)

    assert [d.id for d in docs] == ["urn:uuid:page-0", "urn:uuid:page-1"]
    assert skips.skipped == Counter({"oversized_header": 1, "truncated_file": 1})
    assert locations(skips, "truncated_file") == [f"{path}@{len(parts[0]) + len(parts[1])}"]


@pytest.mark.parametrize("layout", ["members", "whole_file"])
def test_decompression_cap(tmp_path: Path, layout: str) -> None:
    parts = pages(layout == "members")
    bomb = b"<html><body><p>" + b" " * 16_000_000 + b"</p></body></html>"
    parts[2] = response("https://example.org/bomb", layout == "members", bomb, rid="urn:uuid:bomb")
    parts.append(response("https://example.org/3", layout == "members", page(3), rid="urn:uuid:page-3"))
    data = b"".join(parts) if layout == "members" else gzip.compress(b"".join(parts))
    assert len(data) < 100_000
    path = tmp_path / "bomb.warc.gz"
    path.write_bytes(data)

    docs, skips = read(path, max_decompressed_bytes=4_000_000)

    assert [d.id for d in docs] == ["urn:uuid:page-0", "urn:uuid:page-1"]
    assert skips.skipped == Counter({"decompression_limit": 1})
    assert locations(skips, "decompression_limit") == [f"{path}@{len(parts[0]) + len(parts[1])}"]
    # Under the default cap the same file reads whole.
    docs, skips = read(path)
    assert [d.id for d in docs] == ["urn:uuid:page-0", "urn:uuid:page-1", "urn:uuid:page-3"]
    assert skips.skipped == Counter({"too_large": 1})


def test_file_gone_or_replaced_after_listing(tmp_path: Path) -> None:
    names = ["a.warc", "b.warc", "c.warc.gz", "d.warc"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(response(f"https://example.org/{i}", name.endswith(".gz"), page(i), rid=f"urn:uuid:{i}"))
    (tmp_path / "e.warc").symlink_to(tmp_path / "missing.warc")
    source = WarcSource(paths=[str(tmp_path / "*.warc*")])
    assert source.fingerprint() == source.fingerprint()  # the dangling link is listed, and fine

    skips = SkipLog()
    documents = source.documents(skips)
    assert next(documents).id == "urn:uuid:0"  # every file is listed by now
    (tmp_path / "b.warc").unlink()
    (tmp_path / "c.warc.gz").unlink()
    (tmp_path / "c.warc.gz").mkdir()

    assert [d.id for d in documents] == ["urn:uuid:3"]
    assert skips.skipped == Counter({"unreadable": 3})
    assert locations(skips, "unreadable") == [str(tmp_path / name) for name in ("b.warc", "c.warc.gz", "e.warc")]
