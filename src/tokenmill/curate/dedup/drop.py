"""What a dedup fit leaves for apply: `drop.json`, the id of every document to remove mapped to
what it duplicates (the kept copy, and for near-duplicates their estimated similarity)."""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any

from pydantic import PrivateAttr

from tokenmill.atomic import write_text
from tokenmill.curate.block import BlockStats, CorpusBlock
from tokenmill.sources.document import Document

DROP_FILE = "drop.json"


def write_drop(workdir: Path, drop: dict[str, Any]) -> None:
    write_text(workdir / DROP_FILE, json.dumps(drop, ensure_ascii=False))


class DropListBlock(CorpusBlock):
    """A dedup block: fit writes the drop list, apply removes the documents on it by id
    (stage 01 makes ids unique). Subclasses write `fit` and `removal`."""

    _drop: dict[str, Any] | None = PrivateAttr(None)

    def load(self, workdir: Path) -> None:
        self._drop = json.loads((workdir / DROP_FILE).read_text(encoding="utf-8"))

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        if self._drop is None:
            raise RuntimeError(f"{type(self).__name__}.apply needs load(workdir) first")
        copy_of = self._drop.get(doc.id)
        if copy_of is None:
            return doc
        stats.remove(doc, *self.removal(copy_of))
        return None

    @abstractmethod
    def removal(self, copy_of: Any) -> tuple[str, str]:
        """The reason and detail recorded for a document whose drop-list entry is `copy_of`."""
