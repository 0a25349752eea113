"""Durable writes: every rename that publishes a file or folder is followed by an fsync of the
folder it lands in; a full disk (ENOSPC, injected) removes the unfinished file and names it;
weights that are not finite are never written."""

from __future__ import annotations

import builtins
import errno
import json
import os
import random
import stat
import string
from pathlib import Path

import numpy as np
import pytest
import torch

import tokenmill.atomic
import tokenmill.shards
import tokenmill.tokenizer.tokens
from tokenmill.atomic import TMP_MARK, atomic_dir, write_json, write_text
from tokenmill.errors import TokenmillError
from tokenmill.model.config import ModelConfig
from tokenmill.model.io import WEIGHTS, build_model, save_model
from tokenmill.runfolder import RunFolder
from tokenmill.shards import ShardWriter, read_shards
from tokenmill.sources.document import Document
from tokenmill.tokenizer.tokens import TokenShardWriter

SMALL = {"vocab_size": 64, "context_length": 16, "d_model": 32, "n_layers": 2, "n_heads": 4}


@pytest.fixture
def disk_log(monkeypatch) -> list[tuple[str, str]]:
    """("rename", destination) and ("fsync-dir", folder) as they happen, in order."""
    log: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            log.append(("fsync-dir", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        log.append(("rename", str(Path(dst).resolve())))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def assert_durable(log: list[tuple[str, str]], path: Path) -> None:
    """`path` was renamed into place, and its folder fsynced after that rename."""
    path = path.resolve()
    renames = [i for i, event in enumerate(log) if event == ("rename", str(path))]
    assert renames, f"{path} was never renamed into place: {log}"
    assert ("fsync-dir", str(path.parent)) in log[renames[-1] + 1 :], f"{path.parent} not fsynced after the rename: {log}"


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_letters + " \n", k=n))


def test_markers_and_manifest_are_fsynced_into_their_folder(tmp_path, disk_log):
    write_json(tmp_path / "done.json", {"seconds": 1.0})
    assert_durable(disk_log, tmp_path / "done.json")
    run = RunFolder(tmp_path / "run")
    run.prepare()
    run.mark_running("01_data", "abc", {})
    assert_durable(disk_log, run.manifest_path)


def test_a_stage_folder_is_fsynced_when_published_and_when_replaced(tmp_path, disk_log):
    for text in ("first", "second"):
        with atomic_dir(tmp_path / "02_curate") as tmp:
            write_text(tmp / "stats.json", text)
        assert_durable(disk_log, tmp_path / "02_curate")
    assert (tmp_path / "02_curate" / "stats.json").read_text() == "second"
    assert not [p for p in tmp_path.iterdir() if TMP_MARK in p.name]


def test_document_and_token_shards_are_fsynced_into_their_folder(tmp_path, disk_log):
    with ShardWriter(tmp_path / "docs", shard_bytes=100) as writer:
        for i in range(3):
            writer.write(Document(str(i), "x" * 80, "web"))
    assert len(writer.paths) == 3
    for path in writer.paths:
        assert_durable(disk_log, path)
    tokens = TokenShardWriter(tmp_path / "tokens", "train", np.dtype("<u2"), shard_tokens=100)
    tokens.write(np.arange(150), np.array([60, 90]))
    for path in tokens.close():
        assert_durable(disk_log, path)


def test_model_weights_are_fsynced_into_their_folder(tmp_path, disk_log):
    save_model(build_model(ModelConfig(**SMALL), device="cpu"), tmp_path / "model")
    assert_durable(disk_log, tmp_path / "model" / WEIGHTS)
    assert_durable(disk_log, tmp_path / "model" / "model.json")


# --- a full disk ---------------------------------------------------------------------------


class FullDisk:
    """Files on a disk with `room` bytes left: a write past it fails as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def open(self, path, mode="r", *args, **kwargs):
        f = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (the caller closes it)
        return _Filling(f, self) if any(c in mode for c in "wax+") else f


class _Filling:
    def __init__(self, f, disk: FullDisk) -> None:
        self._f, self._disk = f, disk

    def write(self, data):
        n = len(data) if isinstance(data, str) else memoryview(data).nbytes
        if n > self._disk.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.room -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Make the files tokenmill writes live on a disk with `room` bytes left."""

    def fill(room: int) -> FullDisk:
        disk = FullDisk(room)
        for module in (tokenmill.atomic, tokenmill.shards, tokenmill.tokenizer.tokens):
            monkeypatch.setattr(module, "open", disk.open, raising=False)
        return disk

    return fill


def write_docs(folder: Path, docs: list[Document], shard_bytes: int) -> list[Path]:
    with ShardWriter(folder, shard_bytes=shard_bytes) as writer:
        for doc in docs:
            writer.write(doc)
    return writer.paths


def test_a_full_disk_mid_shard_removes_the_shard_and_names_it(tmp_path, full_disk):
    rng = random.Random(0)
    docs = [Document(str(i), random_text(rng, 20_000), "web") for i in range(40)]  # ~800 KB, hardly compressible
    whole = write_docs(tmp_path / "whole", docs, shard_bytes=400_000)
    assert len(whole) == 2
    first_size = whole[0].stat().st_size

    full_disk(first_size + 50_000)  # room for the first shard, not for the second
    folder = tmp_path / "out"
    with pytest.raises(TokenmillError, match="no space left") as raised:
        write_docs(folder, docs, shard_bytes=400_000)
    assert str(folder / "shard-00001.jsonl.zst") in str(raised.value)
    assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == errno.ENOSPC
    assert sorted(p.name for p in folder.iterdir()) == ["shard-00000.jsonl.zst"]  # no temporary file left
    assert [d.id for d in read_shards([folder / "shard-00000.jsonl.zst"])] == [d.id for d in read_shards([whole[0]])]


def test_a_full_disk_mid_token_shard_removes_it_and_names_it(tmp_path, full_disk):
    full_disk(1_000)
    writer = TokenShardWriter(tmp_path, "train", np.dtype("<u2"), shard_tokens=10_000)
    with pytest.raises(TokenmillError, match="no space left") as raised:
        writer.write(np.arange(2_000) % 300, np.array([500, 1_500]))
    assert str(tmp_path / "train-00000.bin") in str(raised.value)
    assert list(tmp_path.iterdir()) == []
    writer.abort()  # what a caller does on the error: nothing left to do


def test_a_full_disk_keeps_the_last_marker_and_names_the_file(tmp_path, full_disk):
    write_json(tmp_path / "manifest.json", {"stages": {}})
    full_disk(100)
    with pytest.raises(TokenmillError, match="no space left") as raised:
        write_json(tmp_path / "manifest.json", {"stages": {f"{i:02d}_stage": {"status": "done"} for i in range(20)}})
    assert str(tmp_path / "manifest.json") in str(raised.value)
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"stages": {}}


# --- weights that are not finite ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_and_no_folder_is_left(tmp_path, bad):
    model = build_model(ModelConfig(**SMALL), device="cpu")
    with torch.no_grad():
        model.layers[1].ffn.w2.weight[3, 5] = bad
    with pytest.raises(TokenmillError, match=r"layers\.1\.ffn\.w2\.weight holds NaN or infinite values"):
        save_model(model, tmp_path / "model")
    assert not (tmp_path / "model").exists()
    with pytest.raises(TokenmillError, match=r"layers\.1\.ffn\.w2\.weight"), atomic_dir(tmp_path / "06_align") as tmp:
        save_model(model, tmp / "sft")
    assert list(tmp_path.iterdir()) == []
