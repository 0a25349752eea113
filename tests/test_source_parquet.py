"""ParquetSource: exact documents and skip counts over row groups, nulls and broken files."""

from __future__ import annotations

import datetime
import os
import threading
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.parquet import ParquetSource


def read(source: ParquetSource) -> tuple[list[Document], SkipLog]:
    skips = SkipLog()
    return list(source.documents(skips)), skips


def write(path: Path, columns: dict[str, list], row_group_size: int = 3) -> Path:
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


@pytest.fixture(autouse=True)
def no_whole_table_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading must go batch by batch: whole-table reads fail the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("whole-table read")

    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq, "read_table", refuse)


def test_rows_over_several_row_groups(tmp_path: Path) -> None:
    texts = [f"row {i}" for i in range(10)]
    texts[4] = None
    texts[7] = "  "
    path = write(
        tmp_path / "a.parquet",
        {
            "text": texts,
            "id": list(range(100, 110)),
            "date": [datetime.date(2024, 1, 1 + i) for i in range(10)],
            "blob": [b"\x00\x01"] * 10,  # not JSON: left out of meta
        },
    )
    assert pq.ParquetFile(path).num_row_groups == 4

    docs, skips = read(ParquetSource(paths=[str(path)], domain="papers"))
    kept = [0, 1, 2, 3, 5, 6, 8, 9]
    assert docs == [
        Document(
            id=f"{path}#{i}",
            text=f"row {i}",
            source="papers",
            meta={"orig_id": 100 + i, "date": f"2024-01-{1 + i:02d}", "location": f"{path}#{i}"},
        )
        for i in kept
    ]
    assert dict(skips.skipped) == {"missing_text": 1, "empty": 1}
    assert skips.summary()["skipped"]["missing_text"]["examples"][0]["location"] == f"{path}#4"
    assert skips.summary()["skipped"]["empty"]["examples"][0]["location"] == f"{path}#7"


def test_broken_files_are_skipped_and_reading_goes_on(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", {"text": ["a0", "a1"]})
    write(tmp_path / "b.parquet", {"body": ["no text column"]})
    (tmp_path / "c.parquet").write_bytes(os.urandom(4096))
    write(tmp_path / "d.parquet", {"text": ["d0", None, "d2"]})
    (tmp_path / "e.txt").write_text("not taken from a directory")

    docs, skips = read(ParquetSource(paths=[str(tmp_path)]))
    assert [(d.id, d.text) for d in docs] == [
        (f"{tmp_path}/a.parquet#0", "a0"),
        (f"{tmp_path}/a.parquet#1", "a1"),
        (f"{tmp_path}/d.parquet#0", "d0"),
        (f"{tmp_path}/d.parquet#2", "d2"),
    ]
    assert dict(skips.skipped) == {"missing_text": 2, "unreadable": 1}
    summary = skips.summary()["skipped"]
    assert [e["location"] for e in summary["missing_text"]["examples"]] == [
        f"{tmp_path}/b.parquet",
        f"{tmp_path}/d.parquet#1",
    ]
    assert summary["unreadable"]["examples"][0]["location"] == f"{tmp_path}/c.parquet"


def test_text_key_limit_and_size(tmp_path: Path) -> None:
    path = write(tmp_path / "a.parquet", {"body": ["short", "x" * 200, "third", "fourth"]})
    docs, skips = read(ParquetSource(paths=[str(path)], text_key="body", max_doc_bytes=100, limit=2))
    assert [(d.id, d.text) for d in docs] == [(f"{path}#0", "short"), (f"{path}#2", "third")]
    assert dict(skips.skipped) == {"too_large": 1}


def test_oversized_rows_are_skipped_before_they_become_python_strings(tmp_path: Path) -> None:
    big = "x" * 8_000_000
    path = write(
        tmp_path / "a.parquet",
        {"text": ["first", big, "third", "fourth"], "html": ["<p>1</p>", "<p>2</p>", "y" * 3_000_000, "<p>4</p>"]},
        row_group_size=2,
    )

    tracemalloc.start()
    try:
        docs, skips = read(ParquetSource(paths=[str(path)], max_doc_bytes=1_000_000))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert [(d.id, d.text, d.meta["html"]) for d in docs] == [(f"{path}#0", "first", "<p>1</p>"), (f"{path}#3", "fourth", "<p>4</p>")]
    assert dict(skips.skipped) == {"too_large": 2}
    examples = skips.summary()["skipped"]["too_large"]["examples"]
    assert [(e["location"], e["detail"]) for e in examples] == [
        (f"{path}#1", "8,000,000 bytes > max_doc_bytes 1,000,000"),
        (f"{path}#2", "3,000,000 bytes in column 'html' > max_doc_bytes 1,000,000"),
    ]
    assert peak < 2_000_000  # neither the 8 MB text nor the 3 MB value became a str


def test_fifo_is_skipped_without_blocking(tmp_path: Path) -> None:
    write(tmp_path / "a.parquet", {"text": ["a0"]})
    os.mkfifo(tmp_path / "b.parquet")  # left out of a folder; named here, as a glob would
    source = ParquetSource(paths=[str(tmp_path / "b.parquet"), str(tmp_path / "a.parquet")])
    result: list = []
    thread = threading.Thread(target=lambda: result.append(read(source)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        os.close(os.open(tmp_path / "b.parquet", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading blocked")
    docs, skips = result[0]
    assert [d.text for d in docs] == ["a0"]
    assert dict(skips.skipped) == {"special_file": 1}
