"""The block: one curation step over a stream of documents, and the record of what it did.

Two kinds, as in datatrove:

- `DocumentBlock` looks at one document at a time (a quality rule, language ID, PII
  redaction): `apply(doc, stats)` returns the document (maybe changed) or None after
  recording why it was removed with `stats.remove(doc, reason)`.
- `CorpusBlock` must see the whole corpus before it can judge a document (dedup, a model
  trained on the corpus): `fit(ctx)` runs a pass over every shard through the executor and
  leaves its state in `ctx.workdir`; then `load(workdir)` is called once in each worker
  before `apply`.

A block is also its own config (a pydantic model): its fields are the settings a run config
names, `enabled` switches it off, and `domains` limits it to documents of those domains (web
rules would destroy code). Blocks are pickled to worker processes and Ray tasks, so state
lives in fields or on disk, never in open handles.
"""

from __future__ import annotations

from abc import abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from tokenmill.sources.document import Document

T = TypeVar("T")
R = TypeVar("R")

SAMPLES_PER_REASON = 5
EXCERPT_CHARS = 400


class Executor(Protocol):
    """Runs a function over items in parallel (local processes, or Ray tasks); results in order."""

    workers: int

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]: ...


@dataclass
class FitContext:
    shards: list[Path]  # the corpus as it stands when the block is reached
    workdir: Path  # the block's own folder; persists across a resumed run
    executor: Executor
    seed: int


class BlockStats:
    """Documents and bytes in and out of one block, removals by reason and domain, samples, errors.

    Stats from shards processed in different workers are combined with `merge`.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.docs_in = self.bytes_in = self.docs_out = self.bytes_out = 0
        self.in_by_domain: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.removed_bytes: Counter[str] = Counter()
        self.removed_by_domain: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()  # block-specific: redactions per PII type, ...
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.errors = 0
        self.error_samples: list[dict[str, str]] = []
        self.last_removal: tuple[str, str] = ("", "")  # the reason and detail of the latest `remove`

    def seen(self, doc: Document) -> None:
        self.docs_in += 1
        self.bytes_in += _size(doc)
        self.in_by_domain[doc.source] += 1

    def kept(self, doc: Document) -> None:
        self.docs_out += 1
        self.bytes_out += _size(doc)

    def remove(self, doc: Document, reason: str, detail: str = "") -> None:
        """Record that `doc` is removed and why; the caller then returns None."""
        self.removed[reason] += 1
        self.last_removal = (reason, detail)
        self.removed_bytes[reason] += _size(doc)
        self.removed_by_domain[doc.source] += 1
        samples = self.samples.setdefault(reason, [])
        if len(samples) < SAMPLES_PER_REASON:
            samples.append({"id": doc.id, "source": doc.source, "detail": detail, "excerpt": doc.text[:EXCERPT_CHARS]})

    def count(self, key: str, n: int = 1) -> None:
        self.counters[key] += n

    def error(self, doc: Document, exc: BaseException) -> None:
        self.errors += 1
        if len(self.error_samples) < SAMPLES_PER_REASON:
            self.error_samples.append({"id": doc.id, "error": f"{type(exc).__name__}: {exc}"[:300]})

    def merge(self, other: BlockStats) -> None:
        for attr in ("docs_in", "bytes_in", "docs_out", "bytes_out", "errors"):
            setattr(self, attr, getattr(self, attr) + getattr(other, attr))
        for attr in ("in_by_domain", "removed", "removed_bytes", "removed_by_domain", "counters"):
            getattr(self, attr).update(getattr(other, attr))
        for reason, samples in other.samples.items():
            mine = self.samples.setdefault(reason, [])
            mine.extend(samples[: SAMPLES_PER_REASON - len(mine)])
        self.error_samples.extend(other.error_samples[: SAMPLES_PER_REASON - len(self.error_samples)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "docs_in": self.docs_in,
            "bytes_in": self.bytes_in,
            "docs_out": self.docs_out,
            "bytes_out": self.bytes_out,
            "removed": {
                r: {"docs": n, "bytes": self.removed_bytes[r], "samples": self.samples.get(r, [])}
                for r, n in sorted(self.removed.items())
            },
            "removed_share_by_domain": {
                d: round(self.removed_by_domain[d] / n, 4) for d, n in sorted(self.in_by_domain.items())
            },
            "counters": dict(sorted(self.counters.items())),
            "errors": self.errors,
            "error_samples": self.error_samples,
        }

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any], in_by_domain: dict[str, int] | None = None) -> BlockStats:
        s = cls(name)
        s.docs_in, s.bytes_in, s.docs_out, s.bytes_out = d["docs_in"], d["bytes_in"], d["docs_out"], d["bytes_out"]
        for reason, r in d["removed"].items():
            s.removed[reason] = r["docs"]
            s.removed_bytes[reason] = r["bytes"]
            s.samples[reason] = r["samples"]
        s.counters.update(d["counters"])
        s.errors, s.error_samples = d["errors"], d["error_samples"]
        return s


def _size(doc: Document) -> int:
    return len(doc.text.encode("utf-8", errors="replace"))


class Block(BaseModel):
    """Settings shared by every block; subclasses set `name` and add their own fields."""

    model_config = ConfigDict(extra="forbid")

    name: ClassVar[str]
    # A block that fails on a document keeps it unchanged (nothing is lost) unless dropping is
    # the safe choice, as for PII redaction.
    drop_on_error: ClassVar[bool] = False

    enabled: bool = True
    domains: list[str] | None = Field(None, description="Only documents of these domains; None means all.")

    def applies_to(self, doc: Document) -> bool:
        return self.domains is None or doc.source in self.domains


class DocumentBlock(Block):
    @abstractmethod
    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        ...


class CorpusBlock(Block):
    @abstractmethod
    def fit(self, ctx: FitContext) -> None:
        """Look at the whole corpus (`ctx.shards`, in parallel through `ctx.executor`); save state in `ctx.workdir`."""

    @abstractmethod
    def load(self, workdir: Path) -> None:
        """Load what `fit` saved; called once per worker process before `apply`."""

    @abstractmethod
    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        ...
