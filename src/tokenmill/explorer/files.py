"""Reading a run folder safely: every path a request names must resolve inside the run folder.

The explorer reads only what a run wrote, and a request can name a file (a stage's figure, a
stats file). A name with `..`, an absolute path, or a symbolic link that leads out of the run
folder is refused, so the page can never be used to read anything else on the machine.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

from tokenmill.errors import TokenmillError

# What /api/file serves, and as what. Anything else (weights, shards) is not for a browser.
CONTENT_TYPES = {
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".jsonl": "text/plain; charset=utf-8",
    ".yaml": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}


class OutsideRun(TokenmillError):
    """A path that is not a file inside the run folder."""


def inside(root: Path, relative: str) -> Path:
    """The file `relative` names inside `root`, after resolving links; OutsideRun when it is not one."""
    if not relative or "\x00" in relative or "\\" in relative:
        raise OutsideRun(f"not a path inside the run folder: {relative!r}")
    parts = PurePosixPath(relative)
    if parts.is_absolute() or ".." in parts.parts:
        raise OutsideRun(f"not a path inside the run folder: {relative!r}")
    base = root.resolve()
    path = (base / parts).resolve()
    if not path.is_relative_to(base):
        raise OutsideRun(f"{relative!r} leads outside the run folder")
    if not path.is_file():
        raise OutsideRun(f"no such file in the run folder: {relative!r}")
    return path


def read_json(path: Path, default: Any = None) -> Any:
    """A JSON file's content, or `default` when it is missing or torn (a stage may be writing it)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    """The objects of a JSONL file, skipping lines that are not JSON objects (a line being written)."""
    rows: list[dict] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict):
                    rows.append(row)
                    if limit is not None and len(rows) >= limit:
                        break
    except OSError:
        return []
    return rows


def read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
