"""A quality classifier: reference-quality text against random web text, as the GPT-3, LLaMA and
DCLM pipelines train theirs (there with fastText; here logistic regression in scikit-learn).

Features are hashed word unigrams and bigrams (scikit-learn's `HashingVectorizer`, 2^20
buckets, L2-normalised counts) of the CCNet-normalised text: lower case, digits as 0, no
accents. Only words with a letter are features: punctuation, numbers, line breaks, indentation
and markup never reach the classifier. That is deliberate. Two domains of one corpus usually differ in layout
before anything else (on the built-in corpus, the reference domain is reStructuredText with
`====` underlines and the web domain changelogs with `  * ` bullets), and a classifier that
sees layout learns "which file format is this" and nothing that transfers to other text. What
is left for it to learn is vocabulary and phrasing. Where the positive and the negative
domains are about different things (Python's documentation against Debian's package notes on
the built-in corpus), that is largely topic, and its high held-out accuracy then says that the
topics are separable, not that it measures writing quality; `metrics.json` lists the n-grams
that weigh most on each side so that a person can see what it learned.

Documents are split into training and held-out sets by a hash of their id; the held-out
accuracy and ROC AUC, and the score distribution of every scored domain, go to `metrics.json`.
The saved model is plain arrays (`model.npz`: the non-zero weights and the bias) and the
vectoriser's settings (`state.json`), never a pickle. meta["quality"] is P(reference-like);
the default mode only annotates, and the mixture can oversample by it.
"""

from __future__ import annotations

import shutil
import sys
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from tokenmill.atomic import atomic_open, write_text
from tokenmill.curate.block import BlockStats, FitContext
from tokenmill.curate.ngram import normalize
from tokenmill.curate.reference import census, choose_reference, extract, in_held_out, read_sample, sampling_rate
from tokenmill.curate.trained import TrainedBlock, distribution
from tokenmill.errors import TokenmillError
from tokenmill.figures import bar_chart
from tokenmill.sources.document import PROSE_DOMAINS, Document

if TYPE_CHECKING:  # scikit-learn is imported where it is used: reading a config must stay quick
    from sklearn.feature_extraction.text import HashingVectorizer

MODEL_FILE = "model.npz"
CHART_FILE = "quality.svg"
# Words with at least one letter: a bare number (a date, a version, a table cell; all digits
# read 0 after normalisation) tells the file format more than the writing.
TOKEN_PATTERN = r"(?u)\b\w*[^\W\d_]\w*\b"
EVAL_DOCS = 1_000  # documents per other domain scored in fit, to show where each domain lands
TOP_FEATURES = 20
NAMING_DOCS = 2_000  # training documents whose n-grams name the top-weighted hash buckets
EXAMPLES = 3
EXCERPT_CHARS = 200


class HashedLogistic:
    """Logistic regression over hashed word n-grams; its state is a weight vector and a bias."""

    def __init__(self, n_features: int, ngram_max: int, max_chars: int, coef: np.ndarray, intercept: float) -> None:
        self.n_features, self.ngram_max, self.max_chars = n_features, ngram_max, max_chars
        self.coef, self.intercept = coef, intercept
        self.vectorizer = make_vectorizer(n_features, ngram_max)

    def features(self, texts: list[str]):
        return self.vectorizer.transform([t[: self.max_chars] for t in texts])

    def score(self, texts: list[str]) -> np.ndarray:
        """P(positive) of each text."""
        z = self.features(texts) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def save(self, path: Path) -> None:
        nonzero = np.flatnonzero(self.coef)
        with atomic_open(path, "wb") as f:
            np.savez(
                f, index=nonzero.astype(np.int32), weight=self.coef[nonzero], intercept=np.array([self.intercept]),
                settings=np.array([self.n_features, self.ngram_max, self.max_chars], np.int64),
            )

    @classmethod
    def load(cls, path: Path) -> HashedLogistic:
        try:
            with np.load(path, allow_pickle=False) as z:
                n_features, ngram_max, max_chars = (int(v) for v in z["settings"])
                coef = np.zeros(n_features)
                coef[z["index"]] = z["weight"]
                return cls(n_features, ngram_max, max_chars, coef, float(z["intercept"][0]))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise TokenmillError(f"cannot read quality model {path}: {e}") from e


def make_vectorizer(n_features: int, ngram_max: int) -> HashingVectorizer:
    from sklearn.feature_extraction.text import HashingVectorizer

    return HashingVectorizer(
        n_features=n_features, ngram_range=(1, ngram_max), preprocessor=normalize, token_pattern=TOKEN_PATTERN,
        lowercase=False, alternate_sign=False, norm="l2", dtype=np.float64,
    )


def train(pos: list[str], neg: list[str], n_features: int = 2**20, ngram_max: int = 2, max_chars: int = 10_000,
          c: float = 1.0) -> HashedLogistic:
    """Fit the classifier: positives labelled 1, negatives 0, each class weighted to equal mass."""
    from sklearn.linear_model import LogisticRegression

    model = HashedLogistic(n_features, ngram_max, max_chars, np.zeros(n_features), 0.0)
    x = model.features(pos + neg)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    # lbfgs has no random component: the same data gives the same weights.
    lr = LogisticRegression(C=c, class_weight="balanced", solver="lbfgs", max_iter=2000).fit(x, y)
    model.coef, model.intercept = lr.coef_[0].astype(np.float64), float(lr.intercept_[0])
    return model


class QualityClassifier(TrainedBlock):
    """Scores how much a document reads like the reference domain: meta["quality"] in [0, 1]."""

    name: ClassVar[str] = "quality"
    model_file: ClassVar[str] = MODEL_FILE
    apply_only: ClassVar[tuple[str, ...]] = ("mode", "min_score")

    domains: list[str] | None = Field(default_factory=lambda: list(PROSE_DOMAINS))
    positive_domains: list[str] | None = Field(
        None, description="Reference-quality domains (label 1); None: the corpus's highest-quality domain."
    )
    negative_domains: list[str] = Field(default_factory=lambda: ["web"], description="Random web-like text (label 0).")
    train_docs: int = Field(20_000, ge=2, description="Documents sampled per class, at most.")
    train_bytes: int = Field(20_000_000, ge=1, description="Text sampled per class, at most.")
    max_chars: int = Field(10_000, gt=0, description="Characters of a document the classifier reads, from its start.")
    n_features: int = Field(2**20, ge=2**10, le=2**24, description="Hash buckets of the word n-gram features.")
    ngram_max: int = Field(2, ge=1, le=3, description="Word n-grams of lengths 1..ngram_max.")
    c: float = Field(1.0, gt=0, description="C of the logistic regression: the inverse of its L2 penalty.")
    held_out: float = Field(0.2, gt=0.0, lt=1.0, description="Share of the sampled documents kept out of training.")
    mode: Literal["annotate", "filter"] = Field(
        "annotate", description="annotate: set meta['quality'] only; filter: also remove documents below min_score."
    )
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="Least quality score kept in filter mode.")

    @model_validator(mode="after")
    def _check(self) -> QualityClassifier:
        overlap = set(self.positive_domains or []) & set(self.negative_domains)
        if overlap:
            raise ValueError(f"domains {sorted(overlap)} are both positive and negative")
        return self

    # --- fit ---------------------------------------------------------------------------------

    def fit(self, ctx: FitContext) -> None:
        if self.open_fit(ctx):
            return
        t = time.perf_counter()
        sizes = census(ctx)
        docs = {d: n for d, (n, _) in sizes.items()}
        negative = list(self.negative_domains)
        positive = self.positive_domains or choose_reference({d: n for d, n in docs.items() if d not in negative})
        missing = [name for name, group in (("positive", positive), ("negative", negative))
                   if not sum(docs.get(d, 0) for d in group)]
        if missing:
            reason = f"no {' or '.join(missing)} documents (positive {positive}, negative {negative})"
            self.finish_fit(ctx.workdir, {"trained": False, "reason": reason}, {})
            return
        others = [d for d in docs if (self.domains is None or d in self.domains) and d not in positive + negative]
        rates = {d: sampling_rate(sizes, positive, self.train_docs, self.train_bytes) for d in positive}
        rates.update({d: sampling_rate(sizes, negative, self.train_docs, self.train_bytes) for d in negative})
        rates.update({d: sampling_rate(sizes, [d], EVAL_DOCS, 2**62) for d in others})
        sample = extract(ctx, rates, ctx.workdir / "sample")
        pos = read_sample(sample, positive, self.train_docs, self.train_bytes, ctx.seed)
        neg = read_sample(sample, negative, self.train_docs, self.train_bytes, ctx.seed)
        sample_seconds = time.perf_counter() - t

        t = time.perf_counter()
        split = {d.id: in_held_out(d.id, ctx.seed, self.held_out) for d in pos + neg}
        pos_train = [d.text for d in pos if not split[d.id]]
        neg_train = [d.text for d in neg if not split[d.id]]
        if not pos_train or not neg_train:
            self.finish_fit(ctx.workdir, {"trained": False, "reason": "too few documents to train on"}, {})
            return
        print(f"[quality] training on {len(pos_train)} {positive} vs {len(neg_train)} {negative} documents", file=sys.stderr)
        model = train(pos_train, neg_train, self.n_features, self.ngram_max, self.max_chars, self.c)
        model.save(ctx.workdir / MODEL_FILE)
        train_seconds = time.perf_counter() - t

        test = [d for d in pos + neg if split[d.id]]
        other_docs = [doc for d in others for doc in read_sample(sample, [d], EVAL_DOCS, 2**62, ctx.seed)]
        state = {"trained": True, "positive_domains": positive, "negative_domains": negative}
        metrics = {
            "train": {"positive_docs": len(pos_train), "negative_docs": len(neg_train)},
            **_evaluate(model, test, other_docs, positive),
            "top_features": _top_features(model, pos_train[:NAMING_DOCS] + neg_train[:NAMING_DOCS]),
            "seconds": {"sample": round(sample_seconds, 3), "train": round(train_seconds, 3)},
        }
        write_text(ctx.workdir / CHART_FILE, bar_chart(
            f"Median quality score (P({'+'.join(positive)})) by domain, held-out and sampled documents",
            [(d, v["median"], f"{v['median']:.3f}") for d, v in metrics["score_by_domain"].items()],
            "median quality score (probability, 0 to 1)",
        ))
        shutil.rmtree(ctx.workdir / "sample", ignore_errors=True)
        self.finish_fit(ctx.workdir, state, metrics)

    # --- apply -------------------------------------------------------------------------------

    def load_model(self, path: Path) -> HashedLogistic:
        return HashedLogistic.load(path)

    def score(self, doc: Document, stats: BlockStats) -> Document | None:
        score = round(float(self._model.score([doc.text])[0]), 4)
        doc.meta["quality"] = score
        stats.count(f"score_decile.{min(int(score * 10), 9)}")
        if self.mode == "filter" and score < self.min_score:
            stats.remove(doc, f"{self.name}.min_score", f"quality {score} < {self.min_score}")
            return None
        return doc


def _evaluate(model: HashedLogistic, test: list[Document], others: list[Document], positive: list[str]) -> dict[str, Any]:
    """Accuracy and ROC AUC on the held-out documents; the score distribution and the
    lowest-scored documents of each domain (held-out documents, and samples of the others)."""
    from sklearn.metrics import roc_auc_score

    labels = np.array([d.source in positive for d in test], dtype=int)
    scores = model.score([d.text for d in test]) if test else np.zeros(0)
    held: dict[str, Any] = {"docs": len(test), "positive_docs": int(labels.sum())}
    if test:
        held["accuracy"] = round(float(((scores >= 0.5) == labels).mean()), 4)
    if 0 < labels.sum() < len(test):
        held["roc_auc"] = round(float(roc_auc_score(labels, scores)), 4)
    scored = list(zip(scores.tolist(), test))
    if others:
        scored += list(zip(model.score([d.text for d in others]).tolist(), others))
    by_domain: dict[str, list[tuple[float, Document]]] = {}
    for s, d in scored:
        by_domain.setdefault(d.source, []).append((s, d))
    return {
        "held_out": held,
        "score_by_domain": {d: distribution([s for s, _ in v], 4) for d, v in sorted(by_domain.items())},
        "lowest": {
            d: [{"id": doc.id, "quality": round(s, 4), "excerpt": doc.text[:EXCERPT_CHARS]}
                for s, doc in sorted(v, key=lambda x: (x[0], x[1].id))[:EXAMPLES]]
            for d, v in sorted(by_domain.items())
        },
    }


def _top_features(model: HashedLogistic, texts: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The hash buckets that weigh most towards each class, named by the n-grams of `texts` that fall in them."""
    from sklearn.utils import murmurhash3_32

    order = np.argsort(model.coef)
    top = {"positive": order[::-1][:TOP_FEATURES], "negative": order[:TOP_FEATURES]}
    wanted = {int(i) for ids in top.values() for i in ids}
    names: dict[int, Counter[str]] = {i: Counter() for i in wanted}
    analyze = model.vectorizer.build_analyzer()
    terms: Counter[str] = Counter()
    for text in texts:
        terms.update(analyze(text[: model.max_chars]))
    for term, n in terms.items():
        i = abs(murmurhash3_32(term, seed=0, positive=False)) % model.n_features  # HashingVectorizer's index
        if i in names:
            names[i][term] += n
    return {
        side: [{"ngrams": [t for t, _ in names[int(i)].most_common(3)], "weight": round(float(model.coef[i]), 3)} for i in ids]
        for side, ids in top.items()
    }

