"""JsonlSource: exact documents and skip counts for plain, gzip and zstd files and bad input."""

from __future__ import annotations

import gzip
import json
import re
import tracemalloc
import zlib
from pathlib import Path

import pytest
import zstandard

import tokenmill.sources.jsonl as jsonl_module
from tokenmill.errors import TokenmillError
from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.jsonl import JsonlSource


def read(source: JsonlSource) -> tuple[list[Document], SkipLog]:
    skips = SkipLog()
    return list(source.documents(skips)), skips


def write(path: Path, lines: list[bytes]) -> Path:
    data = b"".join(line + b"\n" for line in lines)
    if path.name.endswith(".gz"):
        data = gzip.compress(data)
    elif path.name.endswith(".zst"):
        data = zstandard.ZstdCompressor().compress(data)
    path.write_bytes(data)
    return path


def record(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def skip_locations(skips: SkipLog, reason: str, kind: str = "skipped") -> list[str]:
    return [e["location"] for e in skips.summary()[kind].get(reason, {}).get("examples", [])]


@pytest.mark.parametrize("name", ["docs.jsonl", "docs.jsonl.gz", "docs.jsonl.zst"])
def test_reads_plain_and_compressed(tmp_path: Path, name: str) -> None:
    path = write(
        tmp_path / name,
        [
            record(text="first doc", id="a-1", url="https://x.org/1", meta={"lang": "en", "score": 0.5}),
            record(text="second doc", date="2024-01-02", metadata={"lang": "fr"}),
        ],
    )
    docs, skips = read(JsonlSource(paths=[str(path)], domain="wiki"))
    assert docs == [
        Document(
            id=f"{path}:1",
            text="first doc",
            source="wiki",
            meta={"lang": "en", "score": 0.5, "orig_id": "a-1", "url": "https://x.org/1", "location": f"{path}:1"},
        ),
        Document(
            id=f"{path}:2",
            text="second doc",
            source="wiki",
            meta={"lang": "fr", "date": "2024-01-02", "location": f"{path}:2"},
        ),
    ]
    assert skips.summary()["skipped_total"] == 0
    assert skips.summary()["repaired_total"] == 0


def test_last_line_without_newline_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "one"}\n{"text": "two"}')
    docs, skips = read(JsonlSource(paths=[str(path)]))
    assert [(d.id, d.text) for d in docs] == [(f"{path}:1", "one"), (f"{path}:2", "two")]
    assert skips.summary()["skipped_total"] == 0


def test_bad_lines_are_skipped_or_repaired(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bad.jsonl",
        [
            record(text="alpha"),
            b'{"text": "broken"',  # malformed
            b"[1, 2]",  # not an object
            record(body="no text key"),
            record(text=5),  # text not a string
            record(text="   \n "),  # empty
            b"",  # blank line: ignored silently
            b'{"text": "caf\xe9 ok", "url": "u\xff"}',  # invalid UTF-8 inside strings
            b'{"text": "lone \\ud800 here", "url": "v\\udc80"}',  # lone surrogate escapes
            record(text="omega"),
            b"[" * 100_000 + b"]" * 100_000,  # too deep for the parser: malformed
        ],
    )
    docs, skips = read(JsonlSource(paths=[str(path)]))
    assert [d.id for d in docs] == [f"{path}:1", f"{path}:8", f"{path}:9", f"{path}:10"]
    assert [docs[0].text, docs[1].text, docs[3].text] == ["alpha", "caf\ufffd ok", "omega"]
    # check_text turns the surrogate's three surrogatepass bytes into one U+FFFD each.
    assert re.fullmatch("lone \ufffd+ here", docs[2].text)
    assert docs[1].meta == {"url": "u\ufffd", "location": f"{path}:8"}
    assert re.fullmatch("v\ufffd+", docs[2].meta["url"])
    for doc in docs:  # what the shard writer does: every field must be valid UTF-8
        json.dumps(doc.to_dict(), ensure_ascii=False).encode("utf-8")
    assert dict(skips.skipped) == {"malformed_json": 2, "missing_text": 3, "empty": 1}
    assert dict(skips.repaired) == {"invalid_utf8": 2}
    assert skip_locations(skips, "malformed_json") == [f"{path}:2", f"{path}:11"]
    assert skip_locations(skips, "missing_text") == [f"{path}:3", f"{path}:4", f"{path}:5"]
    assert skip_locations(skips, "empty") == [f"{path}:6"]
    assert skip_locations(skips, "invalid_utf8", "repaired") == [f"{path}:8", f"{path}:9"]


def test_line_size_limit_is_exact(tmp_path: Path) -> None:
    fits = record(text="x" * 88)
    assert len(fits) == 100
    path = write(tmp_path / "a.jsonl", [fits, record(text="y" * 89), record(text="after")])
    docs, skips = read(JsonlSource(paths=[str(path)], max_doc_bytes=100))
    assert [d.id for d in docs] == [f"{path}:1", f"{path}:3"]
    assert dict(skips.skipped) == {"too_large": 1}
    assert skip_locations(skips, "too_large") == [f"{path}:2"]


def test_huge_line_is_skipped_unparsed_in_bounded_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(record(text="before") + b"\n")
        f.write(b'{"text": "')
        chunk = b"a" * (1 << 20)
        for _ in range(50):
            f.write(chunk)
        f.write(b'"}\n')
        f.write(record(text="after") + b"\n")

    parsed_sizes: list[int] = []
    real_loads = json.loads
    monkeypatch.setattr(jsonl_module.json, "loads", lambda s, **kw: parsed_sizes.append(len(s)) or real_loads(s, **kw))

    tracemalloc.start()
    try:
        docs, skips = read(JsonlSource(paths=[str(path)]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert [(d.id, d.text) for d in docs] == [(f"{path}:1", "before"), (f"{path}:3", "after")]
    assert dict(skips.skipped) == {"too_large": 1}
    assert skip_locations(skips, "too_large") == [f"{path}:2"]
    assert max(parsed_sizes) < 100  # the big line never reached the JSON parser
    assert peak < 25_000_000  # one max_doc_bytes read plus a drain chunk, not 50 MB


def lines_of(n: int) -> list[bytes]:
    # Varied text, so the gzip stream does not collapse into a few bytes.
    return [record(text=f"document {i} " + zlib.crc32(str(i).encode()).to_bytes(4, "big").hex() * 8) for i in range(n)]


def test_truncated_gzip_keeps_complete_lines(tmp_path: Path) -> None:
    lines = lines_of(1000)
    full = gzip.compress(b"".join(line + b"\n" for line in lines))
    cut = tmp_path / "a.jsonl.gz"
    cut.write_bytes(full[: len(full) // 2])
    after = write(tmp_path / "b.jsonl", [record(text="next file")])

    # What a decoder can recover from the cut file: its complete lines are the expected documents.
    recoverable = zlib.decompressobj(wbits=31).decompress(full[: len(full) // 2])
    n = recoverable.count(b"\n")
    assert 0 < n < 1000

    docs, skips = read(JsonlSource(paths=[str(cut), str(after)]))
    expected = [json.loads(line)["text"] for line in lines[:n]]
    assert [d.text for d in docs[:-1]] == expected
    assert [d.id for d in docs[:-1]] == [f"{cut}:{i}" for i in range(1, n + 1)]
    assert (docs[-1].id, docs[-1].text) == (f"{after}:1", "next file")
    assert dict(skips.skipped) == {"truncated_file": 1}
    assert skip_locations(skips, "truncated_file") == [f"{cut}:{n + 1}"]


def test_truncated_zstd_is_reported(tmp_path: Path) -> None:
    full = zstandard.ZstdCompressor().compress(b"".join(line + b"\n" for line in lines_of(1000)))
    cut = tmp_path / "a.jsonl.zst"
    cut.write_bytes(full[: len(full) // 2])
    _, skips = read(JsonlSource(paths=[str(cut)]))
    assert dict(skips.skipped) == {"truncated_file": 1}


def test_limit_stops_across_files(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        write(tmp_path / f"{name}.jsonl", [record(text=f"{name}{i}") for i in range(5)])
    docs, _ = read(JsonlSource(paths=[str(tmp_path)], limit=7))
    assert [d.text for d in docs] == ["a0", "a1", "a2", "a3", "a4", "b0", "b1"]


def test_directories_and_globs(tmp_path: Path) -> None:
    write(tmp_path / "a.jsonl", [record(text="a")])
    write(tmp_path / "b.jsonl.gz", [record(text="b")])
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.json.zst", [record(text="c")])
    write(tmp_path / "notes.txt", [record(text="not jsonl")])
    write(tmp_path / "single.json", [record(text="plain json is not taken from a directory")])

    docs, _ = read(JsonlSource(paths=[str(tmp_path)]))
    assert [d.text for d in docs] == ["a", "b", "c"]

    docs, _ = read(JsonlSource(paths=[str(tmp_path / "*.jsonl*")]))
    assert [d.text for d in docs] == ["a", "b"]

    docs, _ = read(JsonlSource(paths=[str(tmp_path / "**" / "*.zst"), str(tmp_path / "a.jsonl")]))
    assert [d.text for d in docs] == ["c", "a"]

    # A file named explicitly, or twice, is read once whatever its suffix.
    docs, _ = read(JsonlSource(paths=[str(tmp_path / "notes.txt"), str(tmp_path / "notes.txt")]))
    assert [d.text for d in docs] == ["not jsonl"]


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope" / "*.jsonl")
    source = JsonlSource(paths=[missing])
    with pytest.raises(TokenmillError, match="nope"):
        list(source.documents(SkipLog()))
    with pytest.raises(TokenmillError, match="nope"):
        source.fingerprint()


def test_fingerprint_follows_content_and_config(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", [record(text="a")])
    source = JsonlSource(paths=[str(path)])
    first = source.fingerprint()
    assert source.fingerprint() == first
    assert JsonlSource(paths=[str(path)], text_key="body").fingerprint() != first
    with open(path, "ab") as f:
        f.write(record(text="b") + b"\n")
    assert source.fingerprint() != first
