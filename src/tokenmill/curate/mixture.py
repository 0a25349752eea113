"""The mixture: how much of each domain the training data holds, and which documents fill it.

Three knobs, as in the data recipes of GPT-3, The Pile and Llama:

- a weight per domain: 3.0 repeats every document of the domain three times (wiki is
  usually seen 3-4 times while web text is seen once), 0.5 keeps half of them;
- oversampling by quality: a multiplier per quality label of each document (the perplexity
  bucket head / middle / tail, or the quality classifier's score cut into labels by
  thresholds), so that within a domain the better documents are repeated and the worse ones
  thinned out. The multipliers only move
  weight between documents of one domain: each domain's total stays at its weight times its
  size, so the domain weights alone decide the domain shares;
- a budget (`target_bytes`, or `target_tokens` estimated at 4 bytes per token before a
  tokenizer exists) that scales every weight by one factor.

A document's rate r (expected copies) becomes a whole number of copies by systematic
sampling: the k-th document of a domain gets floor(C_k + r_k + u) - floor(C_k + u) copies,
where C_k is the sum of the rates before it and u a per-domain offset drawn from the seed.
So integer weights give exactly that many copies of every document, and a weight of 0.5 keeps
half of the domain to within one document. Shards take their turn in corpus order, but
within a shard the documents are visited in an order drawn from the seed (a hash of their
ids), so that the choice does not follow any pattern of the corpus order (every other
document of a list sorted by quality would be a biased half). Rates are fixed-point
integers: a shard's total does not depend on the order of its documents, so each shard,
given the sum of the rates before it, decides its documents alone.

Copy r > 0 of a document gets the id `ID#repR` and `meta["repeat"] = R`. In each output shard
the first copies come first, then the second copies, and so on, so any prefix of the output
holds the mixture's proportions and no two copies of a document sit side by side.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokenmill.atomic import write_json, write_text
from tokenmill.figures import grouped_bars, human_bytes
from tokenmill.shards import ShardWriter, read_shards
from tokenmill.sources.document import Document

BYTES_PER_TOKEN = 4  # a byte-level BPE on English prose and code; only used before a tokenizer exists
FIXED = 1 << 32  # fixed-point unit of a rate: exact integer sums, the same in any order
OTHER = "other"  # quality label of a document without one, or with one the table does not name


class Mixture(BaseModel):
    """Per-domain weights, quality oversampling and an optional size budget for the final shards."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="False writes every kept document once.")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"wiki": 3.0, "reference": 3.0, "books": 2.0, "papers": 2.0},
        description="Copies per document of a domain: >1 repeats, <1 samples down, 0 drops the domain.",
    )
    default_weight: float = Field(1.0, ge=0, description="Weight of a domain that `weights` does not name.")
    target_bytes: int | None = Field(None, gt=0, description="Scale all weights so that the output holds about this many bytes.")
    target_tokens: int | None = Field(None, gt=0, description="The same budget in tokens, estimated at 4 bytes per token.")
    quality_key: str | None = Field(
        "ppl_bucket", description="The document meta field holding its quality label or score; None turns quality oversampling off."
    )
    quality_multipliers: dict[str, float] = Field(
        default_factory=lambda: {"head": 2.0, "middle": 1.0, "tail": 0.5},
        description="Relative weight of each quality label within its domain; other labels count 1.",
    )
    quality_thresholds: dict[str, float] = Field(
        default_factory=lambda: {"head": 0.7, "middle": 0.3, "tail": 0.0},
        description="A numeric score (such as the quality classifier's) gets the label of the highest threshold it reaches.",
    )

    @model_validator(mode="after")
    def _check(self) -> Mixture:
        for table in ("weights", "quality_multipliers"):
            for key, value in getattr(self, table).items():
                if value < 0:
                    raise ValueError(f"{table}.{key} must be >= 0, got {value}")
        if self.target_bytes is not None and self.target_tokens is not None:
            raise ValueError("set target_bytes or target_tokens, not both")
        return self

    def weight(self, domain: str) -> float:
        return self.weights.get(domain, self.default_weight) if self.enabled else 1.0

    def label(self, doc: Document) -> str:
        if not self.enabled or self.quality_key is None:
            return OTHER
        value = doc.meta.get(self.quality_key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            reached = [(t, label) for label, t in self.quality_thresholds.items() if value >= t]
            value = max(reached)[1] if reached else None
        return value if isinstance(value, str) and value in self.quality_multipliers else OTHER

    def multiplier(self, label: str) -> float:
        return self.quality_multipliers.get(label, 1.0) if self.enabled and self.quality_key else 1.0

    def budget_bytes(self) -> int | None:
        if not self.enabled:
            return None
        return self.target_bytes if self.target_tokens is None else self.target_tokens * BYTES_PER_TOKEN


# One shard's census: domain -> quality label -> [documents, bytes].
Census = dict[str, dict[str, list[int]]]


def census_shard(item: tuple[Path, Mixture]) -> Census:
    """Documents and bytes of one shard by domain and quality label (runs in a worker)."""
    path, mixture = item
    census: Census = {}
    for doc in read_shards([path]):
        cell = census.setdefault(doc.source, {}).setdefault(mixture.label(doc), [0, 0])
        cell[0] += 1
        cell[1] += len(doc.text.encode("utf-8"))
    return census


@dataclass
class MixturePlan:
    rates: dict[str, dict[str, int]]  # domain -> label -> fixed-point expected copies per document
    offsets: dict[str, int]  # domain -> fixed-point offset u of the systematic sampling
    starts: list[dict[str, int]]  # per shard: domain -> sum of the rates of every document before it
    scale: float  # the budget's factor on every weight


def plan_mixture(mixture: Mixture, census: list[Census], seed: int) -> MixturePlan:
    """Each document's rate from the census of every shard; deterministic given the seed."""
    total = _sum_census(census)
    domain_bytes = {d: sum(b for _, b in labels.values()) for d, labels in total.items()}
    budget = mixture.budget_bytes()
    weighted = sum(mixture.weight(d) * b for d, b in domain_bytes.items())
    scale = budget / weighted if budget and weighted else 1.0
    rates: dict[str, dict[str, int]] = {}
    for domain, labels in total.items():
        # Quality multipliers only redistribute within the domain: normalise them by the
        # domain's bytes so that the domain keeps weight x size in total.
        quality_bytes = sum(b * mixture.multiplier(label) for label, (_, b) in labels.items())
        norm = domain_bytes[domain] / quality_bytes if quality_bytes else 0.0
        rates[domain] = {
            label: round(scale * mixture.weight(domain) * norm * mixture.multiplier(label) * FIXED) for label in labels
        }
    offsets = {d: xxhash.xxh64_intdigest(f"{seed}:{d}".encode()) % FIXED for d in total}
    starts, running = [], Counter()
    for shard in census:
        starts.append(dict(running))
        for domain, labels in shard.items():
            running[domain] += sum(n * rates[domain][label] for label, (n, _) in labels.items())
    return MixturePlan(rates, offsets, starts, scale)


@dataclass
class ShardMix:
    """What one worker needs of the plan to write one shard."""

    path: Path
    out_folder: Path
    prefix: str
    mixture: Mixture
    rates: dict[str, dict[str, int]]
    offsets: dict[str, int]
    start: dict[str, int]
    seed: int


def mix_shard(task: ShardMix) -> dict[str, Any]:
    """Write one shard with every document repeated its number of copies (runs in a worker).

    Returns documents and bytes out per domain and the number of documents per copy count.
    """
    docs = list(read_shards([task.path]))
    n_copies = [0] * len(docs)
    cumulative = Counter(task.start)
    for i in sorted(range(len(docs)), key=lambda i: xxhash.xxh64_intdigest(f"{task.seed}:{docs[i].id}".encode("utf-8", "surrogatepass"))):
        doc = docs[i]
        rate = task.rates[doc.source][task.mixture.label(doc)]
        before, offset = cumulative[doc.source], task.offsets[doc.source]
        cumulative[doc.source] = before + rate
        n_copies[i] = (before + rate + offset) // FIXED - (before + offset) // FIXED
    out: dict[str, list[int]] = {}
    copies: Counter[int] = Counter(n_copies)
    writer = ShardWriter(task.out_folder, prefix=task.prefix, shard_bytes=1 << 62)
    with writer:
        for r in range(max(copies, default=0)):
            for doc, n in zip(docs, n_copies):
                if n > r:
                    copy = doc if r == 0 else Document(f"{doc.id}#rep{r}", doc.text, doc.source, {**doc.meta, "repeat": r})
                    writer.write(copy)
                    cell = out.setdefault(doc.source, [0, 0])
                    cell[0] += 1
                    cell[1] += len(doc.text.encode("utf-8"))
    return {"outputs": [p.name for p in writer.paths], "domains": out, "copies": {str(k): v for k, v in sorted(copies.items())}}


def mixture_report(mixture: Mixture, plan: MixturePlan, census: list[Census], mixed: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """`mixture.json`: each domain's raw share, weight, effective share, documents and bytes before and after."""
    total = _sum_census(census)
    after: dict[str, list[int]] = {}
    copies: Counter[str] = Counter()
    for m in mixed:
        for domain, (n, b) in m["domains"].items():
            cell = after.setdefault(domain, [0, 0])
            cell[0] += n
            cell[1] += b
        copies.update(m["copies"])
    bytes_before = sum(b for labels in total.values() for _, b in labels.values())
    bytes_after = sum(b for _, b in after.values())
    domains = {}
    for domain, labels in sorted(total.items()):
        docs_b, bytes_b = sum(n for n, _ in labels.values()), sum(b for _, b in labels.values())
        docs_a, bytes_a = after.get(domain, [0, 0])
        domains[domain] = {
            "weight": mixture.weight(domain),
            "raw_share": round(bytes_b / bytes_before, 4) if bytes_before else 0.0,
            "effective_share": round(bytes_a / bytes_after, 4) if bytes_after else 0.0,
            "docs_before": docs_b,
            "bytes_before": bytes_b,
            "docs_after": docs_a,
            "bytes_after": bytes_a,
            "effective_repeats": round(bytes_a / bytes_b, 3) if bytes_b else 0.0,
            "by_quality": {
                label: {"docs": n, "bytes": b, "multiplier": mixture.multiplier(label), "rate": round(plan.rates[domain][label] / FIXED, 4)}
                for label, (n, b) in sorted(labels.items())
            },
        }
    return {
        "seed": seed,
        "enabled": mixture.enabled,
        "quality_key": mixture.quality_key if mixture.enabled else None,
        "target_bytes": mixture.budget_bytes(),
        "scale": round(plan.scale, 6),
        "docs_before": sum(d["docs_before"] for d in domains.values()),
        "bytes_before": bytes_before,
        "docs_after": sum(d["docs_after"] for d in domains.values()),
        "bytes_after": bytes_after,
        "tokens_after_estimate": bytes_after // BYTES_PER_TOKEN,
        "docs_by_copies": dict(sorted(copies.items(), key=lambda kv: int(kv[0]))),
        "domains": domains,
    }


def write_mixture_report(out_dir: Path, report: dict[str, Any]) -> None:
    write_json(out_dir / "mixture.json", report)
    domains = report["domains"]
    write_text(out_dir / "mixture.svg", grouped_bars(
        "Domain shares: raw corpus vs training mixture",
        [f"{name}\n×{d['weight']:g}, {human_bytes(d['bytes_after'])}" for name, d in domains.items()],
        {"raw": [d["raw_share"] for d in domains.values()],
         "effective (after mixing)": [d["effective_share"] for d in domains.values()]},
        "share of the bytes", percent=True))


def _sum_census(census: list[Census]) -> Census:
    total: Census = {}
    for shard in census:
        for domain, labels in shard.items():
            for label, (n, b) in labels.items():
                cell = total.setdefault(domain, {}).setdefault(label, [0, 0])
                cell[0] += n
                cell[1] += b
    return dict(sorted(total.items()))
