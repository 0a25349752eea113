"""Writing small JSONL corpora for tests (a module of its own: `conftest` names collide across folders)."""

import json
from pathlib import Path


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "url": f"https://example.org/{i}"}) + "\n")
    return path
