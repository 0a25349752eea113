"""The run folder and its manifest: what each stage ran with, what it wrote, and whether it is done.

`manifest.json` holds, per stage: status (running, done, failed), the hash of the stage's
settings, the fingerprints of its inputs, its outputs with their sizes, a fingerprint of
their content, key metrics, figures and wall time. A stage is fresh, and is skipped, when it
is done, its settings hash and inputs are unchanged, and its outputs are still there as written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import xxhash

from tokenmill.atomic import remove_stale_tmp, write_json

MANIFEST = "manifest.json"


def folder_fingerprint(folder: Path) -> tuple[str, dict[str, int]]:
    """Content hash of every file under `folder`, and each file's size (relative path -> bytes)."""
    h = xxhash.xxh3_128()
    sizes: dict[str, int] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        sizes[rel] = path.stat().st_size
        h.update(rel.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest(), sizes


class RunFolder:
    """`runs/NAME/`: one sub-folder per stage and the manifest that describes them."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / MANIFEST

    def prepare(self) -> list[Path]:
        """Create the folder and clear what killed writes left behind; return what was cleared."""
        self.root.mkdir(parents=True, exist_ok=True)
        return remove_stale_tmp(self.root)

    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        return json.loads(self.manifest_path.read_text(encoding="utf-8"))

    def entry(self, stage: str) -> dict[str, Any] | None:
        return self.manifest()["stages"].get(stage)

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def is_fresh(self, stage: str, config_hash: str, inputs: dict[str, str]) -> bool:
        e = self.entry(stage)
        if not e or e.get("status") != "done":
            return False
        if e.get("config_hash") != config_hash or e.get("inputs") != inputs:
            return False
        folder = self.stage_dir(stage)
        for rel, size in e.get("outputs", {}).items():
            path = folder / rel
            if not path.is_file() or path.stat().st_size != size:
                return False
        return True

    def _update(self, stage: str, fields: dict[str, Any]) -> None:
        m = self.manifest()
        m["stages"][stage] = {**m["stages"].get(stage, {}), **fields}
        write_json(self.manifest_path, m)

    def mark_running(self, stage: str, config_hash: str, inputs: dict[str, str]) -> None:
        self._update(
            stage,
            {"status": "running", "config_hash": config_hash, "inputs": inputs, "started_at": _now(), "outputs": {}},
        )

    def mark_done(self, stage: str, metrics: dict[str, Any], figures: list[str], wall_time_s: float) -> None:
        fingerprint, sizes = folder_fingerprint(self.stage_dir(stage))
        self._update(
            stage,
            {
                "status": "done",
                "outputs": sizes,
                "output_fingerprint": fingerprint,
                "metrics": metrics,
                "figures": figures,
                "wall_time_s": round(wall_time_s, 3),
                "finished_at": _now(),
            },
        )

    def mark_failed(self, stage: str, error: str, wall_time_s: float) -> None:
        self._update(stage, {"status": "failed", "error": error, "wall_time_s": round(wall_time_s, 3), "finished_at": _now()})

    def output_fingerprint(self, stage: str) -> str | None:
        e = self.entry(stage)
        return e.get("output_fingerprint") if e and e.get("status") == "done" else None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")

