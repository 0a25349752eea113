"""A filter made of rules checked in order: the first rule a document fails removes it, under
that rule's name, with what was measured."""

from __future__ import annotations

from abc import abstractmethod

from tokenmill.curate.block import BlockStats, DocumentBlock
from tokenmill.sources.document import Document


class RuleFilter(DocumentBlock):
    """Subclasses write `failed_rule`."""

    @abstractmethod
    def failed_rule(self, text: str) -> tuple[str, float | str] | None:
        """The first rule the text fails, with the measured value; None if it passes them all."""

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        rule = self.failed_rule(doc.text)
        if rule is None:
            return doc
        name, measured = rule
        stats.remove(doc, f"{self.name}.{name}", measured if isinstance(measured, str) else f"{measured:.3f}")
        return None
