"""A corpus block's folder: kept across a resumed run for the same fit, cleared for another.

A fit writes `inputs.json` (what it was asked to do: the block's settings, the seed, the
shards) when it starts and `done.json` (its summary) when it ends, so a killed run finds its
work again and a finished fit is not run twice.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tokenmill.atomic import write_json

DONE = "done.json"
INPUTS = "inputs.json"


def open_workdir(workdir: Path, fingerprint: dict[str, Any]) -> bool:
    """Make `workdir` ready for a fit described by `fingerprint`; True when its result is already there.

    Files left by a fit of the same settings over the same shards are kept (a killed fit
    resumes shard by shard); anything else in the folder is from another fit and is cleared.
    """
    fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back: tuples become lists
    workdir.mkdir(parents=True, exist_ok=True)
    inputs = workdir / INPUTS
    if inputs.exists() and json.loads(inputs.read_text(encoding="utf-8")) == fingerprint:
        return (workdir / DONE).exists()
    for child in workdir.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    write_json(inputs, fingerprint)
    return False


def shards_fingerprint(shards: list[Path]) -> list[list[Any]]:
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in shards]
