import json
from pathlib import Path

import pytest


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"text": t, "url": f"https://example.org/{i}"}) + "\n")
    return path


@pytest.fixture
def jsonl_corpus(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "in" / "docs.jsonl", [f"document number {i} about {i % 7} things" for i in range(50)])
