"""Atomic, durable file writes: a killed process or a power loss never leaves a half-written
file under its final name.

Every artifact is written to a temporary sibling, flushed to disk, then renamed over the
final path (rename is atomic on POSIX within one file system). Readers therefore see either
the old file, the new file, or no file, never a torn one. `publish` is the one rename that
gives a finished file or folder its name: it then fsyncs the parent folder, because a rename
is only in the file system's journal once its directory is synced (ext4, XFS), and a machine
that loses power before that comes back with the old name, or none.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tokenmill.errors import TokenmillError

TMP_MARK = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp/mkdtemp create private (0600/0700) entries; artifacts get the usual permissions.
_FILE_MODE = 0o666 & ~_umask()
_DIR_MODE = 0o777 & ~_umask()


def tmp_sibling(path: Path) -> Path:
    """A unique temporary name next to `path`, recognisable as unfinished by its marker."""
    fd, name = tempfile.mkstemp(prefix=f"{path.name}{TMP_MARK}", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    os.close(fd)
    return Path(name)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make the entries of `folder` durable: the files created, renamed or removed in it."""
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows: a folder cannot be opened, and NTFS journals its renames itself
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        # Some file systems (FUSE, some network mounts) cannot sync a folder: there is nothing more to do.
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def publish(tmp: str | os.PathLike, final: str | os.PathLike) -> None:
    """Give a finished (already fsynced) temporary file or folder its final name, durably.

    Whatever is at `final` when a folder is published is moved aside first (a folder cannot be
    renamed over a non-empty one, nor over a file), so that `final` is never without a complete
    version for longer than the two renames take; the old copy is deleted once the new one is in.
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if tmp.is_dir() and (final.exists() or final.is_symlink()):
        old = Path(tempfile.mkdtemp(prefix=f"{final.name}{TMP_MARK}old-", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def sync_tree(folder: str | os.PathLike) -> None:
    """fsync every file and folder under `folder` (those written atomically are already clean:
    syncing them again costs a system call), so that publishing the folder publishes its content."""
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(root)


@contextmanager
def naming_full_disk(path: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk (or quota) while writing `path` into an error that names the file;
    an OSError raised by a write does not."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise TokenmillError(f"no space left on the device while writing {path}: free some space and run again") from e
        raise


class PendingFile:
    """A binary file written under a temporary sibling of `path`: `commit()` fsyncs it and
    publishes it under `path`, `discard()` removes it. A full disk raised by `commit()` or by a
    write inside `guard()` discards the file and names `path`."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp = tmp_sibling(self.path)
        self.file = open(self.tmp, "wb")  # noqa: SIM115 (closed by commit or discard)

    @contextmanager
    def guard(self) -> Iterator[None]:
        try:
            with naming_full_disk(self.path):
                yield
        except TokenmillError:
            self.discard()
            raise

    def commit(self) -> Path:
        with self.guard():
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
        publish(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # the buffered bytes a full disk refused; the file goes anyway
        self.tmp.unlink(missing_ok=True)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file for writing; on success fsync it and publish it as `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path)
    try:
        with naming_full_disk(path), open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it to `path` only when the block succeeds.

    An existing `path` is replaced. A killed process leaves only a `*.tmp-*` directory, which
    `remove_stale_tmp` clears on the next run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}{TMP_MARK}", dir=path.parent))
    tmp.chmod(_DIR_MODE)
    try:
        yield tmp
        sync_tree(tmp)
        publish(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_tmp(folder: str | os.PathLike) -> list[Path]:
    """Delete leftovers of writes that were killed mid-way; return what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if TMP_MARK in p.name:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
