"""What a checkpoint may hold and when it is read: the SHA-256 of every file is recorded at save
and checked before a resume unpickles anything; NaN weights are never saved; and each
checkpoint is fsynced into its folder."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import stat
from pathlib import Path

import pytest
from pretrain_runs import train_here

from tokenmill.atomic import TMP_MARK
from tokenmill.errors import TokenmillError
from tokenmill.pretrain import loop
from tokenmill.pretrain.checkpoint import MARKER, read_marker

FIELDS = {"steps": 4, "checkpoint_every": 2, "eval_every": 100, "sample_tokens": 0, "keep_last": 2}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model_config, corpus) -> Path:
    """The work folder of a 4-step run: checkpoints of steps 2 and 4."""
    work = tmp_path_factory.mktemp("saved")
    train_here(model_config, corpus, work, **FIELDS)
    return work


def test_the_marker_records_the_sha256_of_every_file(saved):
    for step in (2, 4):
        folder = saved / "checkpoints" / f"step-{step:08d}"
        files = sorted(p.name for p in folder.iterdir() if p.name != MARKER)
        assert ".metadata" in files and "__0_0.distcp" in files
        recorded = read_marker(folder)["sha256"]
        assert recorded == {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in files}


def alter(folder: Path) -> None:
    data = bytearray((folder / "__0_0.distcp").read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    (folder / "__0_0.distcp").write_bytes(bytes(data))


def replace_metadata(folder: Path) -> None:
    (folder / ".metadata").write_bytes(b"\x80\x04N.")  # a pickle of None: any pickle could stand here


def add(folder: Path) -> None:
    (folder / "__9_0.distcp").write_bytes(b"\0" * 16)


def remove(folder: Path) -> None:
    (folder / "__0_0.distcp").unlink()


@pytest.mark.parametrize("change,name,problem", [
    (alter, "__0_0.distcp", "has changed since it was saved"),
    (replace_metadata, ".metadata", "has changed since it was saved"),
    (add, "__9_0.distcp", "was not there when it was saved"),
    (remove, "__0_0.distcp", "is missing"),
])
def test_resume_refuses_a_checkpoint_whose_files_changed(tmp_path, saved, model_config, corpus, change, name, problem):
    work = tmp_path / "work"
    shutil.copytree(saved, work, ignore=shutil.ignore_patterns("out"))
    latest = work / "checkpoints" / "step-00000004"
    change(latest)
    with pytest.raises(TokenmillError, match=problem) as raised:
        train_here(model_config, corpus, work, resume=True, **{**FIELDS, "steps": 6})
    assert f"{latest}: {name} " in str(raised.value)
    assert not (work / "checkpoints" / "step-00000006").exists()


def test_an_unchanged_checkpoint_resumes(tmp_path, saved, model_config, corpus):
    work = tmp_path / "work"
    shutil.copytree(saved, work, ignore=shutil.ignore_patterns("out"))
    report = train_here(model_config, corpus, work, resume=True, **{**FIELDS, "steps": 6})
    assert report["steps"] == 6


def test_non_finite_weights_are_never_checkpointed(tmp_path, monkeypatch, model_config, corpus):
    # After the optimizer step of step 2, a weight turns NaN: the checkpoint of step 2 is refused
    # by the name of that weight, and nothing of it is left on disk.
    poisoned = {}

    def build(named, *args, **kwargs):
        optimizer = build_optimizer(named, *args, **kwargs)
        name, param = named[-1]
        poisoned["name"] = name

        def after_step(opt, *_):
            if opt.state[param]["step"] == 2:
                param.data.view(-1)[0] = math.nan

        optimizer.register_step_post_hook(after_step)
        return optimizer

    build_optimizer = loop.build_optimizer
    monkeypatch.setattr(loop, "build_optimizer", build)
    with pytest.raises(TokenmillError, match="not saving checkpoint step-00000002") as raised:
        train_here(model_config, corpus, tmp_path, **FIELDS)
    assert f"model.{poisoned['name']} holds NaN or infinite values" in str(raised.value)
    assert list(tmp_path.glob("checkpoints/*")) == []  # no step-00000002, nor its .tmp-save folder
    assert not (tmp_path / "out").exists()


def test_each_checkpoint_is_fsynced_into_its_folder(tmp_path, monkeypatch, model_config, corpus):
    synced, renamed = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced.append((len(renamed), os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        renamed.append(str(Path(dst).resolve()))

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    train_here(model_config, corpus, tmp_path, **{**FIELDS, "golden_every": 4})
    checkpoints = (tmp_path / "checkpoints").resolve()
    for final in (checkpoints / "step-00000002", checkpoints / "step-00000004", checkpoints / "golden" / "step-00000004"):
        i = renamed.index(str(final))
        assert any(after > i and folder == str(final.parent) for after, folder in synced), final
    assert not [p for p in checkpoints.rglob("*") if TMP_MARK in p.name]
