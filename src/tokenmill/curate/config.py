"""The `curate:` section of a run config: the executor, every block in pipeline order, the mixture.

Each block is its own settings model, on by default with its published defaults; a config
names only what it changes:

    curate:
      executor: {kind: ray, ray_address: auto}
      c4: {filter_lorem_ipsum: false}
      fuzzy_dedup: {threshold: 0.7}
      toxicity: {enabled: false}
      mixture: {weights: {wiki: 3.0, web: 1.0}, target_tokens: 50000000}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from tokenmill.curate.block import Block
from tokenmill.curate.dedup.exact import ExactDedup
from tokenmill.curate.dedup.minhash import FuzzyDedup
from tokenmill.curate.executor import ExecutorConfig
from tokenmill.curate.filters.c4 import C4Filter
from tokenmill.curate.filters.fineweb import FineWebFilter
from tokenmill.curate.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from tokenmill.curate.langid import LanguageFilter
from tokenmill.curate.mixture import Mixture
from tokenmill.curate.perplexity import PerplexityFilter
from tokenmill.curate.pii import PIIRedactor
from tokenmill.curate.quality import QualityClassifier
from tokenmill.curate.toxicity import ToxicityFilter

# The blocks in the order they run: cheap per-document rules first, so that dedup and the
# models see less text; PII before anything that trains on the text.
BLOCKS = (
    "language", "gopher_repetition", "gopher_quality", "c4", "fineweb",
    "exact_dedup", "fuzzy_dedup", "pii", "toxicity", "perplexity", "quality",
)


class CurateConfig(BaseModel):
    """Stage 02: which blocks run, with which settings, where, and the mixture of what they keep."""

    model_config = ConfigDict(extra="forbid")

    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    language: LanguageFilter = Field(default_factory=LanguageFilter)
    gopher_repetition: GopherRepetitionFilter = Field(default_factory=GopherRepetitionFilter)
    gopher_quality: GopherQualityFilter = Field(default_factory=GopherQualityFilter)
    c4: C4Filter = Field(default_factory=C4Filter)
    fineweb: FineWebFilter = Field(default_factory=FineWebFilter)
    exact_dedup: ExactDedup = Field(default_factory=ExactDedup)
    fuzzy_dedup: FuzzyDedup = Field(default_factory=FuzzyDedup)
    pii: PIIRedactor = Field(default_factory=PIIRedactor)
    toxicity: ToxicityFilter = Field(default_factory=ToxicityFilter)
    perplexity: PerplexityFilter = Field(default_factory=PerplexityFilter)
    quality: QualityClassifier = Field(default_factory=QualityClassifier)
    mixture: Mixture = Field(default_factory=Mixture)

    def blocks(self) -> list[Block]:
        """Every block in pipeline order (the pipeline skips those not enabled)."""
        return [getattr(self, name) for name in BLOCKS]
