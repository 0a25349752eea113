"""Toxicity filtering with the classifier that `alt-profanity-check` ships.

The model is a linear SVM over TF-IDF words, trained on short comments (tweets, talk-page
posts) labelled offensive or not, with sigmoid calibration. A whole long document is not
what it was trained on: a changelog of 1,000 lines gets a probability that says nothing, and
the largest score of any line condemns a court judgment for quoting one threat. So a document
is cut into windows of up to `window_chars` characters at sentence and line ends (a comment's
length; a short document is one window), each window is scored, and the document's score is
the mean over windows weighted by their length: the share of its text that reads as abusive.
The threshold is calibrated on a labelled set (benchmarks/toxicity_calibration.py).

What it does not see: hate or threats in polite words, and languages other than English.
What it overrates: words with a second meaning (a female dog, a rooster, a first name).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from tokenmill.curate.block import BlockStats, DocumentBlock
from tokenmill.sources.document import DOMAINS, Document

# The best F0.5 on the calibration split of tests/data/toxicity_labelled.jsonl with 200-character
# windows: precision 0.95, recall 0.80 there, 0.95 and 0.88 held out (benchmarks/toxicity_calibration.py).
DEFAULT_THRESHOLD = 0.8
_BREAK = re.compile(r"\n+|(?<=[.!?])\s+")


def windows(text: str, size: int) -> list[str]:
    """Consecutive sentences and lines joined into pieces of at most `size` characters.

    A single sentence longer than `size` stays whole: cutting words apart would change them.
    """
    pieces: list[str] = []
    current = ""
    for part in _BREAK.split(text):
        part = part.strip()
        if not part:
            continue
        if current and len(current) + 1 + len(part) > size:
            pieces.append(current)
            current = part
        else:
            current = f"{current} {part}" if current else part
    if current:
        pieces.append(current)
    return pieces


class ToxicityFilter(DocumentBlock):
    """Remove documents whose text is mostly abusive; record the score as meta["toxicity"]."""

    name: ClassVar[str] = "toxicity"

    # Code is left alone: its identifiers (kill, abort, dummy, master) are not abuse, and the
    # classifier never saw code.
    domains: list[str] | None = Field(
        default_factory=lambda: [d for d in DOMAINS if d != "code"],
        description="Only documents of these domains; None means all.",
    )
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0.0, le=1.0, description="Remove at or above this score.")
    window_chars: int = Field(200, ge=50, description="Characters per scored window.")

    _model: Any = PrivateAttr(None)

    def __getstate__(self) -> dict[str, Any]:
        # A worker loads the model itself; the block travels as its settings only.
        state = super().__getstate__()
        state["__pydantic_private__"] = {**state["__pydantic_private__"], "_model": None}
        return state

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        score = self.score(doc.text)
        doc.meta["toxicity"] = round(score, 4)
        if score >= self.threshold:
            stats.remove(doc, "toxicity.score", f"toxicity={score:.3f}")
            return None
        return doc

    def score(self, text: str) -> float:
        """Length-weighted mean of the windows' probabilities of being abusive, in [0, 1]."""
        pieces = windows(text, self.window_chars)
        if not pieces:
            return 0.0
        lengths = np.array([len(p) for p in pieces], dtype=np.float64)
        return float(self.probabilities(pieces) @ lengths / lengths.sum())

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """The shipped model's probability that each text is abusive (as `predict_prob` gives it)."""
        if self._model is None:
            self._model = _LinearCalibratedModel.load()
        return self._model.predict(texts)


class _LinearCalibratedModel:
    """profanity_check's model as the few arrays it is.

    Its scikit-learn CalibratedClassifierCV costs about 10 ms a call whatever the input size,
    which at one call per document would be most of the block's time. It averages k calibrated
    linear SVMs: p = mean_k sigmoid(-(a_k * (x . w_k + c_k) + b_k)); computing that directly
    gives the same numbers (tests compare them with `predict_prob`).
    """

    def __init__(self, vectorizer: Any, weights: np.ndarray, intercepts: np.ndarray, a: np.ndarray, b: np.ndarray):
        self.vectorizer, self.weights, self.intercepts, self.a, self.b = vectorizer, weights, intercepts, a, b

    @classmethod
    def load(cls) -> _LinearCalibratedModel:
        # Importing profanity_check unpickles its model (the package's own files).
        from profanity_check.profanity_check import model, vectorizer  # noqa: PLC0415

        folds = model.calibrated_classifiers_
        if model.method != "sigmoid" or any(len(f.calibrators) != 1 for f in folds):
            raise RuntimeError("profanity_check's model is not the binary sigmoid-calibrated SVM this code expects")
        weights = np.stack([f.estimator.coef_[0] for f in folds], axis=1)
        intercepts = np.array([f.estimator.intercept_[0] for f in folds])
        a = np.array([f.calibrators[0].a_ for f in folds])
        b = np.array([f.calibrators[0].b_ for f in folds])
        return cls(vectorizer, weights, intercepts, a, b)

    def predict(self, texts: list[str]) -> np.ndarray:
        decision = self.vectorizer.transform(texts) @ self.weights + self.intercepts
        return (1.0 / (1.0 + np.exp(self.a * decision + self.b))).mean(axis=1)
