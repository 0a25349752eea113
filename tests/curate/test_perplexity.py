"""The perplexity filter: reference choice, CCNet buckets per domain, the drop modes, resumable fit."""

import json
import random

import numpy as np
import pytest
from harness import fit, fit_corpus, run, write_shards
from pydantic import ValidationError

from tokenmill.curate.ngram import NGramLM
from tokenmill.curate.perplexity import PerplexityFilter
from tokenmill.curate.reference import choose_reference
from tokenmill.sources.document import Document

NOUNS = "cat dog bird fish horse cow sheep goat mouse rat".split()
VERBS = "sees chases likes feeds finds meets".split()
ADJS = "big small red old young happy".split()


def sentence(rng: random.Random) -> list[str]:
    return ["The", rng.choice(ADJS), rng.choice(NOUNS), rng.choice(VERBS), "the", rng.choice(NOUNS) + "."]


def document(rng: random.Random, disorder: float) -> str:
    """Paragraphs of the little language; `disorder` of them with their words shuffled."""
    paras = []
    for _ in range(8):
        s = sentence(rng)
        if rng.random() < disorder:
            s = rng.sample(s, len(s)) + ["".join(rng.choice("qxzjvkw") for _ in range(5))]
        paras.append(" ".join(s))
    return "\n\n".join(paras)


def corpus() -> list[Document]:
    rng = random.Random(0)
    docs = [Document(f"ref-{i}", document(rng, 0.0), "reference") for i in range(80)]
    docs += [Document(f"web-{i}", document(rng, i / 40), "web") for i in range(40)]
    docs += [Document(f"man-{i}", document(rng, i / 40), "manuals") for i in range(20)]
    docs += [Document(f"code-{i}", f"def f{i}(x):\n    return x + {i}\n", "code") for i in range(10)]
    rng.shuffle(docs)
    return docs


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    return fit_corpus(tmp_path_factory.mktemp("ppl"), PerplexityFilter(), corpus())


def test_reference_is_the_highest_priority_domain_present():
    assert choose_reference({"web": 9, "manuals": 5, "reference": 1, "code": 50}) == ["reference"]
    assert choose_reference({"web": 9, "wiki": 1}) == ["wiki"]
    assert choose_reference({"news": 3, "blogs": 7, "code": 50}) == ["blogs"]
    assert choose_reference({"code": 50}) == []


def test_cutoffs_are_each_domains_percentiles(fitted):
    block, workdir, docs, _ = fitted
    state = json.loads((workdir / "state.json").read_text())
    assert state["reference_domains"] == ["reference"]
    assert set(state["cutoffs"]) == {"web", "manuals"}  # not code, not the reference itself
    lm = NGramLM.load(workdir / "lm.npz")
    for domain in ("web", "manuals"):
        ppls = [round(lm.perplexity(d.text)[0], 1) for d in docs if d.source == domain]
        expected = [round(float(p), 1) for p in np.percentile(ppls, [30, 60])]
        assert state["cutoffs"][domain] == expected


def test_apply_annotates_buckets_and_skips_code(fitted):
    block, workdir, docs, _ = fitted
    kept, stats = run(block, docs)
    assert len(kept) == len(docs) and not stats.removed  # the default mode only annotates
    cut = json.loads((workdir / "state.json").read_text())["cutoffs"]
    lm = NGramLM.load(workdir / "lm.npz")
    for d in kept:
        if d.source == "code":
            assert "ppl" not in d.meta
            continue
        assert d.meta["ppl"] == round(lm.perplexity(d.text)[0], 1)
        if d.source == "reference":
            assert d.meta["ppl_bucket"] == "head"
        else:
            head, tail = cut[d.source]
            expected = "head" if d.meta["ppl"] < head else "middle" if d.meta["ppl"] < tail else "tail"
            assert d.meta["ppl_bucket"] == expected
    web = [d.meta["ppl_bucket"] for d in kept if d.source == "web"]
    assert (web.count("head"), web.count("middle"), web.count("tail")) == (12, 12, 16)
    assert stats.counters["bucket.tail.web"] == 16
    # Shuffled words read worse than the language itself, and the reference best of all.
    ref = np.median([d.meta["ppl"] for d in kept if d.source == "reference"])
    by_disorder = sorted((int(d.id.split("-")[1]), d.meta["ppl"]) for d in kept if d.source == "web")
    assert ref < by_disorder[0][1] < by_disorder[-1][1]


def test_drop_tail_removes_exactly_the_tail(fitted):
    _, workdir, docs, _ = fitted
    block = PerplexityFilter(mode="drop_tail")
    block.load(workdir)
    kept, stats = run(block, docs)
    bucket_block = PerplexityFilter()
    bucket_block.load(workdir)
    buckets, _ = run(bucket_block, docs)
    tail = {d.id for d in buckets if d.meta.get("ppl_bucket") == "tail"}
    assert {d.id for d in kept} == {d.id for d in docs} - tail
    assert stats.removed["perplexity.tail"] == len(tail) > 0
    assert all(d.source != "reference" for d in docs if d.id in tail)


def test_drop_above_removes_only_documents_above_max_ppl(fitted):
    _, workdir, docs, _ = fitted
    lm = NGramLM.load(workdir / "lm.npz")
    web = sorted(round(lm.perplexity(d.text)[0], 1) for d in docs if d.source == "web")
    limit = web[len(web) // 2]
    block = PerplexityFilter(mode="drop_above", max_ppl=limit)
    block.load(workdir)
    kept, stats = run(block, docs)
    removed = {d.id for d in docs} - {d.id for d in kept}
    assert removed and all(d.meta["ppl"] <= limit for d in kept if "ppl" in d.meta)
    assert all(round(lm.perplexity(d.text)[0], 1) > limit for d in docs if d.id in removed)
    assert stats.removed["perplexity.max_ppl"] == len(removed)


def test_sample_and_model_do_not_depend_on_sharding(fitted, tmp_path):
    _, workdir, docs, _ = fitted
    fit(PerplexityFilter(), write_shards(tmp_path / "in", docs, shards=3), tmp_path / "work")
    a, b = NGramLM.load(workdir / "lm.npz"), NGramLM.load(tmp_path / "work" / "lm.npz")
    for n in range(a.order):
        np.testing.assert_array_equal(a.ngrams[n], b.ngrams[n])
        np.testing.assert_array_equal(a.logprob[n], b.logprob[n])
    assert (workdir / "state.json").read_text() == (tmp_path / "work" / "state.json").read_text()


def test_caps_held_out_and_metrics(tmp_path):
    shards = write_shards(tmp_path / "in", corpus())
    fit(PerplexityFilter(train_docs=20, held_out=0.25), shards, tmp_path / "work")
    m = json.loads((tmp_path / "work" / "metrics.json").read_text())
    assert m["train"]["docs"] + m["train"]["held_out_docs"] == 20
    assert m["train"]["held_out_docs"] > 0
    held = m["perplexity"]["reference (held out)"]["median"]
    assert held < m["perplexity"]["web"]["median"]
    assert {len(m["examples"]["web"]["head"]), len(m["examples"]["web"]["tail"])} == {3}
    assert (tmp_path / "work" / "perplexity.svg").read_text().startswith("<svg")
    assert not (tmp_path / "work" / "sample").exists()


def test_fit_resumes_and_refits_when_settings_change(tmp_path):
    shards = write_shards(tmp_path / "in", corpus())
    work = tmp_path / "work"
    fit(PerplexityFilter(order=3), shards, work)
    stamp = (work / "lm.npz").stat().st_mtime_ns
    fit(PerplexityFilter(order=3, mode="drop_tail"), shards, work)  # apply-only setting: same fit
    assert (work / "lm.npz").stat().st_mtime_ns == stamp
    fit(PerplexityFilter(order=4), shards, work)
    assert NGramLM.load(work / "lm.npz").order == 4


@pytest.mark.parametrize("write_arpa", [True, False])
def test_arpa_file_on_request(tmp_path, write_arpa):
    docs = corpus()
    fit(PerplexityFilter(order=3, write_arpa=write_arpa), write_shards(tmp_path / "in", docs), tmp_path / "work")
    arpa = tmp_path / "work" / "lm.arpa"
    assert arpa.exists() == write_arpa
    if write_arpa:
        kenlm = pytest.importorskip("kenlm")
        ours = NGramLM.load(tmp_path / "work" / "lm.npz")
        model = kenlm.Model(str(arpa))
        for s in ("the big cat sees the dog .", "qq the cat zzz"):
            assert model.score(s) == pytest.approx(ours.score_sentences([s.split()])[0], abs=1e-4)


def test_no_reference_documents_leaves_documents_unscored(tmp_path):
    docs = [Document(f"c{i}", "x = 1", "code") for i in range(5)]
    block = fit(PerplexityFilter(domains=None), write_shards(tmp_path / "in", docs), tmp_path / "work")
    assert json.loads((tmp_path / "work" / "metrics.json").read_text())["trained"] is False
    kept, stats = run(block, docs)
    assert len(kept) == 5 and stats.counters["untrained"] == 5 and "ppl" not in kept[0].meta


def test_settings_are_validated():
    with pytest.raises(ValidationError, match="max_ppl"):
        PerplexityFilter(mode="drop_above")
    with pytest.raises(ValidationError, match="head_percentile"):
        PerplexityFilter(head_percentile=70, tail_percentile=60)
    with pytest.raises(ValidationError):
        PerplexityFilter(unknown_setting=1)
    assert "code" not in PerplexityFilter().domains
