"""The quality classifier: separates distinct classes, saves exactly, is deterministic, ignores layout."""

import json
import random

import numpy as np
import pytest
from harness import fit, fit_corpus, run, write_shards
from pydantic import ValidationError

from tokenmill.curate.quality import HashedLogistic, QualityClassifier, train
from tokenmill.sources.document import Document

SHARED = "the of and to in is that it for as with on be by this are".split()
GOOD = "theorem proof analysis measure evidence method result study history river ancient species".split()
BAD = "click buy now free offer deal cheap win subscribe limited discount bonus".split()


def text(rng: random.Random, words: list[str], noise: list[str], purity: float) -> str:
    paras = []
    for _ in range(4):
        s = [rng.choice(SHARED) if rng.random() < 0.4 else rng.choice(words if rng.random() < purity else noise)
             for _ in range(15)]
        paras.append(" ".join(s).capitalize() + ".")
    return "\n\n".join(paras)


def corpus() -> list[Document]:
    rng = random.Random(0)
    docs = [Document(f"wiki-{i}", text(rng, GOOD, BAD, 0.8), "wiki") for i in range(120)]
    docs += [Document(f"web-{i}", text(rng, BAD, GOOD, 0.8), "web") for i in range(120)]
    docs += [Document(f"man-{i}", text(rng, GOOD, BAD, 0.5), "manuals") for i in range(30)]
    docs += [Document(f"code-{i}", "def f(x):\n    return x\n", "code") for i in range(5)]
    rng.shuffle(docs)
    return docs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return fit_corpus(tmp_path_factory.mktemp("quality"), QualityClassifier(n_features=2**16), corpus())


def test_separates_distinct_classes_on_held_out_documents(fitted):
    _, workdir, _, _ = fitted
    m = json.loads((workdir / "metrics.json").read_text())
    assert m["positive_domains"] == ["wiki"] and m["negative_domains"] == ["web"]
    held = m["held_out"]
    assert held["docs"] > 20 and 0 < held["positive_docs"] < held["docs"]
    assert held["accuracy"] >= 0.9 and held["roc_auc"] >= 0.9
    assert m["train"]["positive_docs"] + m["train"]["negative_docs"] + held["docs"] == 240
    top = {g for f in m["top_features"]["positive"][:5] for g in f["ngrams"]}
    assert top and all(any(w in GOOD for w in g.split()) for g in top)
    domains = m["score_by_domain"]
    assert domains["wiki"]["median"] > domains["manuals"]["median"] > domains["web"]["median"]
    assert (workdir / "quality.svg").read_text().startswith("<svg")


def test_annotate_scores_every_prose_document(fitted):
    block, _, docs, _ = fitted
    kept, stats = run(block, docs)
    assert len(kept) == len(docs) and not stats.removed
    assert all("quality" not in d.meta for d in kept if d.source == "code")
    scores = {s: [d.meta["quality"] for d in kept if d.source == s] for s in ("wiki", "web")}
    assert all(0.0 <= q <= 1.0 for q in scores["wiki"] + scores["web"])
    assert np.mean(scores["wiki"]) > 0.7 > 0.3 > np.mean(scores["web"])
    assert sum(v for k, v in stats.counters.items() if k.startswith("score_decile.")) == len(docs) - 5


def test_filter_mode_removes_exactly_the_documents_below_min_score(fitted):
    _, workdir, docs, _ = fitted
    annotate = QualityClassifier(n_features=2**16)
    annotate.load(workdir)
    scored, _ = run(annotate, docs)
    block = QualityClassifier(n_features=2**16, mode="filter", min_score=0.5)
    block.load(workdir)
    kept, stats = run(block, docs)
    low = {d.id for d in scored if d.meta.get("quality", 1.0) < 0.5}
    assert low and {d.id for d in kept} == {d.id for d in docs} - low
    assert stats.removed["quality.min_score"] == len(low)


def test_save_load_gives_identical_scores(tmp_path):
    rng = random.Random(1)
    pos = [text(rng, GOOD, BAD, 0.9) for _ in range(40)]
    neg = [text(rng, BAD, GOOD, 0.9) for _ in range(40)]
    model = train(pos, neg, n_features=2**14)
    model.save(tmp_path / "model.npz")
    loaded = HashedLogistic.load(tmp_path / "model.npz")
    probe = [text(rng, GOOD, BAD, 0.5) for _ in range(20)]
    np.testing.assert_array_equal(loaded.score(probe), model.score(probe))
    # The same data trains the same weights.
    np.testing.assert_array_equal(train(pos, neg, n_features=2**14).coef, model.coef)


def test_fit_is_deterministic(fitted, tmp_path):
    _, workdir, docs, shards = fitted
    fit(QualityClassifier(n_features=2**16), shards, tmp_path / "work")
    a, b = (np.load(w / "model.npz") for w in (workdir, tmp_path / "work"))
    for key in ("index", "weight", "intercept"):
        np.testing.assert_array_equal(a[key], b[key])


def test_features_see_words_not_layout():
    rng = random.Random(2)
    model = train([text(rng, GOOD, BAD, 0.9) for _ in range(30)], [text(rng, BAD, GOOD, 0.9) for _ in range(30)],
                  n_features=2**14)
    same = ["The theorem, of course!  (2024)", "the theorem of course 1999", "THE\n\n   théorem -- of -- COURSE"]
    scores = model.score(same)
    assert scores[0] == scores[1] == scores[2]
    assert model.score(["click buy now"])[0] < 0.5 < model.score(["theorem proof analysis"])[0]


def test_no_negative_documents_leaves_documents_unscored(tmp_path):
    docs = [d for d in corpus() if d.source != "web"]
    block = fit(QualityClassifier(n_features=2**14), write_shards(tmp_path / "in", docs), tmp_path / "work")
    m = json.loads((tmp_path / "work" / "metrics.json").read_text())
    assert m["trained"] is False and "negative" in m["reason"]
    kept, stats = run(block, docs[:10])
    assert stats.counters["untrained"] == sum(block.applies_to(d) for d in docs[:10])
    assert all("quality" not in d.meta for d in kept)


def test_settings_are_validated():
    with pytest.raises(ValidationError, match="both positive and negative"):
        QualityClassifier(positive_domains=["web"], negative_domains=["web"])
    with pytest.raises(ValidationError):
        QualityClassifier(mode="drop")
    assert "code" not in QualityClassifier().domains
