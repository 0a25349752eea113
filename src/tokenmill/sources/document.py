"""The document every stage passes along, and the ledger of input that could not be read."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

# Domains the mixture knows by name; a config may use others.
DOMAINS = ("web", "wiki", "books", "code", "papers", "reference", "legal", "manuals", "dialogue")
# Domains written in a natural language, which the blocks that judge language or writing look
# at. Code is left alone: identifiers and keywords are English-like enough to pass a language
# check, or odd enough to fail it, and neither says anything.
PROSE_DOMAINS = ("web", "wiki", "books", "papers", "reference", "manuals", "legal", "dialogue")


@dataclass
class Document:
    """One document: `source` is its domain (web, code, ...), `meta` anything else known about it."""

    id: str
    text: str
    source: str
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "source": self.source, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Document:
        return cls(id=d["id"], text=d["text"], source=d["source"], meta=d.get("meta") or {})


class SkipLog:
    """Counts, by reason, the input that was skipped or repaired, with where it happened.

    `skip` is for a unit of input that did not become a document (a malformed line, a binary
    file); `repair` for one that did, but altered (invalid UTF-8 replaced). Only the first
    `keep` locations per reason are stored, so a million bad lines cost a counter, not memory.
    """

    def __init__(self, keep: int = 20) -> None:
        self.keep = keep
        self.skipped: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()
        self._examples: dict[tuple[str, str], list[dict[str, str]]] = {}

    def skip(self, reason: str, location: str, detail: str = "") -> None:
        self._record("skipped", self.skipped, reason, location, detail)

    def repair(self, reason: str, location: str, detail: str = "") -> None:
        self._record("repaired", self.repaired, reason, location, detail)

    def _record(self, kind: str, counter: Counter, reason: str, location: str, detail: str) -> None:
        counter[reason] += 1
        examples = self._examples.setdefault((kind, reason), [])
        if len(examples) < self.keep:
            examples.append({"location": location, "detail": detail[:300]})

    def merge(self, other: SkipLog) -> None:
        self.skipped.update(other.skipped)
        self.repaired.update(other.repaired)
        for key, examples in other._examples.items():
            mine = self._examples.setdefault(key, [])
            mine.extend(examples[: self.keep - len(mine)])

    def summary(self) -> dict[str, Any]:
        def section(kind: str, counter: Counter) -> dict[str, Any]:
            return {
                reason: {"count": n, "examples": self._examples.get((kind, reason), [])}
                for reason, n in sorted(counter.items())
            }

        return {
            "skipped_total": sum(self.skipped.values()),
            "repaired_total": sum(self.repaired.values()),
            "skipped": section("skipped", self.skipped),
            "repaired": section("repaired", self.repaired),
        }

    def print_summary(self, out: TextIO = sys.stderr) -> None:
        if not self.skipped and not self.repaired:
            print("nothing skipped", file=out)
            return
        for kind, counter in (("skipped", self.skipped), ("repaired", self.repaired)):
            for reason, n in sorted(counter.items()):
                first = self._examples[(kind, reason)][0]
                where = first["location"] + (f" ({first['detail']})" if first["detail"] else "")
                print(f"{kind:>8} {n:>7,}  {reason:<22} first at {where}", file=out)
