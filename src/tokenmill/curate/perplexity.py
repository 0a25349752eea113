"""Perplexity filtering as in CCNet: a small n-gram LM of the reference domain scores every document.

`fit` trains the LM (curate/ngram.py: interpolated modified Kneser–Ney, order 5 as CCNet's
KenLM models) on a sample of the reference domain, then scores a sample of every other domain
to set the bucket cut-offs per domain, as CCNet sets them per language: perplexity below the
30th percentile is "head", below the 60th "middle", the rest "tail" (the defaults of CCNet's
`PerplexityBucket`). A document's perplexity is CCNet's: 10 ** (-sum log10 p / tokens) over its
paragraphs, each scored as a sentence with <s> and </s>, so that paragraphs weigh by their
length; rounded to one decimal, as CCNet stores it.

The reference domain is not bucketed against its own model: most of its documents were
training data, and their in-sample perplexity ranks memorisation, not quality. They are
"head", the bucket they define (which leaves the mixture's weighting within that domain
even). An honest in-domain figure comes from reference documents held out of training.

The default mode only annotates (meta["ppl"], meta["ppl_bucket"]), and the mixture oversamples
by bucket. Dropping the tail removes 40% of every domain by construction, whatever its absolute
quality: on the built-in corpus the tail does hold character-set tables (cp1252(7), ppl 1251)
and termcap(5), but also ordinary manual pages (lsof(8), cgroups(7)) and licence files, while
the lowest perplexities of the web domain are near-identical three-line changelogs, boilerplate
that an n-gram model finds easy. `drop_tail` (CCNet's head+middle selection) and `drop_above`
(an absolute `max_ppl`) are there for corpora whose tail is junk.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from tokenmill.atomic import write_text
from tokenmill.curate.block import BlockStats, FitContext
from tokenmill.curate.ngram import NGramLM, paragraphs
from tokenmill.curate.reference import census, choose_reference, extract, in_held_out, rank, read_sample, sampling_rate
from tokenmill.curate.trained import TrainedBlock, distribution
from tokenmill.figures import bar_chart
from tokenmill.shards import read_shards
from tokenmill.sources.document import PROSE_DOMAINS, Document

MODEL_FILE = "lm.npz"
ARPA_FILE = "lm.arpa"
CHART_FILE = "perplexity.svg"
EXAMPLES = 3
EXCERPT_CHARS = 200


class PerplexityFilter(TrainedBlock):
    """Scores documents with an n-gram LM of the reference domain: meta["ppl"], meta["ppl_bucket"]."""

    name: ClassVar[str] = "perplexity"
    model_file: ClassVar[str] = MODEL_FILE
    apply_only: ClassVar[tuple[str, ...]] = ("mode", "max_ppl")

    domains: list[str] | None = Field(default_factory=lambda: list(PROSE_DOMAINS))
    reference_domains: list[str] | None = Field(
        None, description="Domains the LM is trained on; None: the corpus's highest-quality domain (curate/reference.py)."
    )
    order: int = Field(5, ge=2, le=8, description="N-gram order of the LM.")
    min_count: int = Field(2, ge=1, description="Words seen fewer times become <unk>.")
    max_vocab: int = Field(100_000, ge=1, description="Most frequent words kept; the rest become <unk>.")
    train_docs: int = Field(50_000, ge=1, description="Reference documents sampled for training, at most.")
    train_bytes: int = Field(
        10_000_000, ge=1, description="Text sampled for training, at most (training needs ~60x this in memory)."
    )
    held_out: float = Field(0.1, ge=0.0, lt=1.0, description="Share of the reference sample kept out of training, to measure it.")
    cutoff_docs: int = Field(5_000, ge=1, description="Documents per domain scored in fit to set the bucket cut-offs.")
    head_percentile: float = Field(30.0, gt=0, lt=100, description="Below this percentile of its domain: head.")
    tail_percentile: float = Field(60.0, gt=0, lt=100, description="From this percentile of its domain: tail.")
    mode: Literal["bucket", "drop_tail", "drop_above"] = Field(
        "bucket", description="bucket: annotate only; drop_tail: remove the tail; drop_above: remove ppl > max_ppl."
    )
    max_ppl: float | None = Field(None, gt=0, description="Perplexity above which drop_above removes a document.")
    write_arpa: bool = Field(False, description="Also write the LM as an ARPA file (lm.arpa), readable by KenLM.")

    @model_validator(mode="after")
    def _check(self) -> PerplexityFilter:
        if self.head_percentile >= self.tail_percentile:
            raise ValueError(f"head_percentile ({self.head_percentile}) must be below tail_percentile ({self.tail_percentile})")
        if self.mode == "drop_above" and self.max_ppl is None:
            raise ValueError("mode drop_above needs max_ppl")
        return self

    # --- fit ---------------------------------------------------------------------------------

    def fit(self, ctx: FitContext) -> None:
        if self.open_fit(ctx):
            return
        seconds: dict[str, float] = {}
        t = time.perf_counter()
        sizes = census(ctx)
        reference = self.reference_domains or choose_reference({d: n for d, (n, _) in sizes.items()})
        scored = [d for d in sizes if (self.domains is None or d in self.domains) and d not in reference]
        rates = {d: sampling_rate(sizes, reference, self.train_docs, self.train_bytes) for d in reference}
        rates.update({d: sampling_rate(sizes, [d], self.cutoff_docs, 2**62) for d in scored})
        sample = extract(ctx, rates, ctx.workdir / "sample")
        ref_docs = read_sample(sample, reference, self.train_docs, self.train_bytes, ctx.seed)
        train = [d for d in ref_docs if not in_held_out(d.id, ctx.seed, self.held_out)]
        sentences = [p for d in train for p in paragraphs(d.text)]
        seconds["sample"] = time.perf_counter() - t
        if not sentences:
            reason = f"no text of the reference domains {reference} to train on"
            self.finish_fit(ctx.workdir, {"trained": False, "reason": reason}, {})
            return

        t = time.perf_counter()
        print(f"[perplexity] training a {self.order}-gram LM on {len(train)} documents of {reference}", file=sys.stderr)
        lm = NGramLM.train(sentences, self.order, self.min_count, self.max_vocab)
        lm.save(ctx.workdir / MODEL_FILE)
        if self.write_arpa:
            lm.write_arpa(ctx.workdir / ARPA_FILE)
        seconds["train"] = time.perf_counter() - t

        t = time.perf_counter()
        ppl_by_domain = self._score_sample(ctx, sample, scored, reference)
        seconds["score_sample"] = time.perf_counter() - t
        pooled = [p for d in scored for _, _, p in ppl_by_domain.get(d, [])]
        state = {
            "trained": True,
            "reference_domains": reference,
            "cutoffs": {d: self._cutoffs([p for _, _, p in ppl_by_domain[d]]) for d in scored if d in ppl_by_domain},
            # For a domain absent from the sample: the cut-offs of all scored domains pooled.
            "default_cutoffs": self._cutoffs(pooled) if pooled else None,
        }
        metrics = {
            "train": {
                "docs": len(train),
                "bytes": sum(len(d.text.encode("utf-8", errors="replace")) for d in train),
                "tokens": sum(map(len, sentences)),
                "held_out_docs": len(ref_docs) - len(train),
            },
            "lm": lm.summary(),
            "perplexity": {k: distribution([p for _, _, p in v], 1) for k, v in sorted(ppl_by_domain.items())},
            "examples": _examples(sample, ppl_by_domain, scored),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
        }
        write_text(ctx.workdir / CHART_FILE, bar_chart(
            f"Median perplexity under the {'+'.join(reference)} {self.order}-gram LM",
            [(k, v["median"], f"{v['median']:.1f}") for k, v in metrics["perplexity"].items()],
            "median perplexity (lower is closer to the reference)",
        ))
        shutil.rmtree(ctx.workdir / "sample", ignore_errors=True)
        self.finish_fit(ctx.workdir, state, metrics)

    def _score_sample(self, ctx: FitContext, sample: list[Path], scored: list[str],
                      reference: list[str]) -> dict[str, list[tuple[int, str, float]]]:
        """(rank, id, ppl) of the cut-off sample of each scored domain, lowest ranks first, and of
        the held-out reference documents (under "<domain> (held out)")."""
        items = [(p, ctx.workdir / MODEL_FILE, scored, reference, ctx.seed, self.held_out) for p in sample]
        out: dict[str, list[tuple[int, str, float]]] = {}
        for part in ctx.executor.map(_score_sample, items):
            for r, doc_id, domain, ppl in part:
                key = f"{domain} (held out)" if domain in reference else domain
                out.setdefault(key, []).append((r, doc_id, ppl))
        for key, values in out.items():
            values.sort()
            if key in scored:
                del values[self.cutoff_docs :]
        return out

    def _cutoffs(self, ppls: list[float]) -> list[float]:
        head, tail = np.percentile(ppls, [self.head_percentile, self.tail_percentile])
        return [round(float(head), 1), round(float(tail), 1)]

    # --- apply -------------------------------------------------------------------------------

    def load_model(self, path: Path) -> NGramLM:
        return NGramLM.load(path)

    def score(self, doc: Document, stats: BlockStats) -> Document | None:
        ppl, n = self._model.perplexity(doc.text)
        if n == 0:
            stats.count("no_tokens")
            return doc
        ppl = round(ppl, 1)
        cut = self._state["cutoffs"].get(doc.source) or self._state["default_cutoffs"]
        if doc.source in self._state["reference_domains"]:
            bucket = "head"
        elif cut is None:  # nothing was scored in fit: no scale to place it on
            bucket = "middle"
        else:
            bucket = "head" if ppl < cut[0] else "middle" if ppl < cut[1] else "tail"
        doc.meta["ppl"] = ppl
        doc.meta["ppl_bucket"] = bucket
        stats.count(f"bucket.{bucket}")
        stats.count(f"bucket.{bucket}.{doc.source}")
        if self.mode == "drop_tail" and bucket == "tail":
            stats.remove(doc, f"{self.name}.tail", f"ppl {ppl} >= {cut[1]} ({doc.source} p{self.tail_percentile:g})")
            return None
        if self.mode == "drop_above" and ppl > self.max_ppl:
            stats.remove(doc, f"{self.name}.max_ppl", f"ppl {ppl} > {self.max_ppl}")
            return None
        return doc


def _score_sample(item: tuple[Path, Path, list[str], list[str], int, float]) -> list[tuple[int, str, str, float]]:
    """(rank, id, domain, ppl) of one sample shard's documents of the scored domains, and of its
    held-out reference documents (runs in a worker)."""
    path, model_path, scored, reference, seed, held_out_share = item
    lm = NGramLM.load(model_path)
    out = []
    for doc in read_shards([path]):
        if doc.source in scored or (doc.source in reference and in_held_out(doc.id, seed, held_out_share)):
            ppl, n = lm.perplexity(doc.text)
            if n:
                out.append((rank(doc.id, seed), doc.id, doc.source, round(ppl, 1)))
    return out


def _examples(sample: list[Path], ppl_by_domain: dict[str, list[tuple[int, str, float]]], scored: list[str]) -> dict[str, Any]:
    """The lowest- and highest-perplexity documents of each scored domain, with an excerpt."""
    picks: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for d in scored:
        by_ppl = sorted((p, i) for _, i, p in ppl_by_domain.get(d, []))
        picks[d] = {"head": [(i, p) for p, i in by_ppl[:EXAMPLES]], "tail": [(i, p) for p, i in by_ppl[::-1][:EXAMPLES]]}
    wanted = {i for d in picks.values() for side in d.values() for i, _ in side}
    text = {doc.id: doc.text[:EXCERPT_CHARS] for doc in read_shards(sample) if doc.id in wanted}
    return {
        d: {side: [{"id": i, "ppl": p, "excerpt": text.get(i, "")} for i, p in docs] for side, docs in sides.items()}
        for d, sides in picks.items()
    }
