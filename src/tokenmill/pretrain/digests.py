"""The SHA-256 of every file of a checkpoint, recorded when it is saved and checked before it is read.

A `torch.distributed.checkpoint` folder's `.metadata` is a pickle: reading it can run any code
it names, so a checkpoint folder is trusted like code. The digests make "trusted" mean "as it
was saved": a file changed, swapped, added or removed since then (a bad disk, a stray copy, a
hand that edited one file) is refused by name before anything is unpickled. They are no
signature: whoever may rewrite the marker may rewrite the digests too, so load only checkpoints
that you, or someone you trust, wrote.

SHA-256 rather than xxhash (which the run folder's fingerprints use to notice changes): a
non-cryptographic hash lets one craft a file with the digest of another, and these digests
stand between a file and the unpickler. Hashing costs one read of the checkpoint, about 1-2
GB/s per core, next to a save that has just written it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from tokenmill.errors import TokenmillError

ALGORITHM = "sha256"


def _digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, ALGORITHM).hexdigest()


def _files(folder: Path, exclude: str) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != exclude)


def file_digests(folder: Path, exclude: str) -> dict[str, str]:
    """{relative path: SHA-256} of every file under `folder` but the one named `exclude` (the marker that holds them)."""
    return {p.relative_to(folder).as_posix(): _digest(p) for p in _files(folder, exclude)}


def verify_digests(folder: Path, recorded: dict[str, str], exclude: str) -> None:
    """Raise an error naming the first file of `folder` that is not as `recorded`."""
    present = {p.relative_to(folder).as_posix(): p for p in _files(folder, exclude)}
    for name in sorted(recorded.keys() | present.keys()):
        if name not in present:
            problem = "is missing"
        elif name not in recorded:
            problem = "was not there when it was saved"
        elif _digest(present[name]) != recorded[name]:
            problem = f"has changed since it was saved (its {ALGORITHM} differs)"
        else:
            continue
        raise TokenmillError(
            f"checkpoint {folder}: {name} {problem}; a checkpoint is read only as it was written "
            "(its metadata is unpickled): delete the folder, or start afresh without --resume"
        )
