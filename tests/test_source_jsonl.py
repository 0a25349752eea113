"""JsonlSource: exact documents and skip counts for plain, gzip and zstd files and bad input."""

from __future__ import annotations

import gzip
import json
import os
import re
import stat
import threading
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


def zeros_bomb(path: Path, mib: int) -> Path:
    """A compressed file of `mib` MiB of zero bytes, compressed as a stream: KiB on disk."""
    zeros = bytes(1 << 20)
    with open(path, "wb") as f:
        if path.name.endswith(".zst"):
            compressor = zstandard.ZstdCompressor().compressobj()
            f.writelines(compressor.compress(zeros) for _ in range(mib))
            f.write(compressor.flush())
        else:
            with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9) as gz:
                for _ in range(mib):
                    gz.write(zeros)
    return path


@pytest.mark.parametrize("name", ["bomb.jsonl.zst", "bomb.jsonl.gz"])
def test_decompression_bomb_is_skipped_in_flat_memory(tmp_path: Path, name: str) -> None:
    bomb = zeros_bomb(tmp_path / name, 128)
    assert bomb.stat().st_size < 200_000  # 128 MiB from at most 130 KiB (gzip stops near 1:1000)
    after = write(tmp_path / "next.jsonl", [record(text="next file")])

    tracemalloc.start()
    try:
        docs, skips = read(
            JsonlSource(paths=[str(bomb), str(after)], max_doc_bytes=1_000_000, max_decompressed_bytes=8_000_000)
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert [d.text for d in docs] == ["next file"]
    assert dict(skips.skipped) == {"decompression_limit": 1}
    assert skip_locations(skips, "decompression_limit") == [f"{bomb}:1"]
    assert "max_decompressed_bytes (8,000,000 bytes)" in skips.summary()["skipped"]["decompression_limit"]["examples"][0]["detail"]
    # One decompression step (at most 16 MiB for zstandard) and one line read, not the 128 MiB.
    assert peak < 48_000_000


@pytest.mark.parametrize("name", ["docs.jsonl.zst", "docs.jsonl.gz"])
def test_decompression_cap_keeps_the_lines_before_it(tmp_path: Path, name: str) -> None:
    lines = lines_of(1000)
    path = write(tmp_path / name, lines)
    cap = sum(len(line) + 1 for line in lines[:300]) + 10  # 300 whole lines and a bit of the next

    docs, skips = read(JsonlSource(paths=[str(path)], max_decompressed_bytes=cap))

    assert [d.text for d in docs] == [json.loads(line)["text"] for line in lines[:300]]
    assert skip_locations(skips, "decompression_limit") == [f"{path}:301"]
    assert dict(skips.skipped) == {"decompression_limit": 1}
    # The default cap is far above any ordinary file, and a plain file has none.
    docs, skips = read(JsonlSource(paths=[str(path)]))
    assert len(docs) == 1000 and not skips.skipped
    plain = write(tmp_path / "docs.jsonl", lines)
    docs, skips = read(JsonlSource(paths=[str(plain)], max_decompressed_bytes=cap))
    assert len(docs) == 1000 and not skips.skipped


def test_decompression_cap_is_validated() -> None:
    assert JsonlSource(paths=["x"]).max_decompressed_bytes == 8_000_000_000
    with pytest.raises(ValueError, match="max_decompressed_bytes"):
        JsonlSource(paths=["x"], max_decompressed_bytes=0)


def test_file_gone_or_turned_into_a_folder_after_listing(tmp_path: Path) -> None:
    """A file listed, then removed or replaced (as a package manager does) is a skip, not the end."""
    first = write(tmp_path / "a.jsonl", [record(text="a0"), record(text="a1")])
    gone = write(tmp_path / "b.jsonl", [record(text="b0")])
    folder = write(tmp_path / "c.jsonl.gz", [record(text="c0")])
    last = write(tmp_path / "d.jsonl", [record(text="d0")])
    source = JsonlSource(paths=[str(first), str(gone), str(folder), str(last)])
    skips = SkipLog()
    documents = source.documents(skips)
    assert next(documents).text == "a0"  # every file is listed by now
    gone.unlink()
    folder.unlink()
    folder.mkdir()

    assert [d.text for d in documents] == ["a1", "d0"]
    assert dict(skips.skipped) == {"unreadable": 2}
    assert skip_locations(skips, "unreadable") == [str(gone), str(folder)]
    # A path that a pattern lists but that is gone (a dangling link) leaves the fingerprint computable.
    (tmp_path / "e.jsonl").symlink_to(tmp_path / "missing.jsonl")
    listed = JsonlSource(paths=[str(tmp_path / "*.jsonl")])
    assert listed.files()[-1] == tmp_path / "e.jsonl"
    assert listed.fingerprint() == listed.fingerprint()


def test_fifo_is_skipped_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    after = write(tmp_path / "after.jsonl", [record(text="after")])
    docs, skips = read_in_thread(JsonlSource(paths=[str(fifo), str(after)]))
    assert [d.text for d in docs] == ["after"]
    assert skip_locations(skips, "special_file") == [str(fifo)]


def read_in_thread(source: JsonlSource) -> tuple[list[Document], SkipLog]:
    """`read`, failing the test instead of hanging it when reading blocks."""
    result: list[tuple[list[Document], SkipLog]] = []
    thread = threading.Thread(target=lambda: result.append(read(source)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        # Unblock the reader (a writer opens the FIFO) so that the process can end.
        for path in source.paths:
            if stat.S_ISFIFO(os.stat(path).st_mode):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading blocked")
    return result[0]
