"""The mixture: exact copies per weight, systematic down-sampling, quality oversampling, budget, mixture.json."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from pydantic import ValidationError

from tokenmill.curate.executor import ExecutorConfig
from tokenmill.curate.mixture import Mixture
from tokenmill.curate.pipeline import run_blocks
from tokenmill.shards import ShardWriter, read_shards, shard_paths
from tokenmill.sources.document import Document


def corpus(n_per_domain: int = 100, labels: tuple[str, ...] = ()) -> list[Document]:
    docs = []
    for i in range(n_per_domain):
        for domain in ("web", "wiki", "code"):
            meta = {"ppl_bucket": labels[i % len(labels)]} if labels else {}
            docs.append(Document(f"{domain}{i:04d}", f"text {i:04d} " + "y" * 20, domain, meta))  # one size for all
    return docs


def mix(tmp_path: Path, docs: list[Document], mixture: Mixture, seed: int = 0, per_shard: int = 70, name: str = "out"):
    inputs = tmp_path / f"in-{name}"
    with ShardWriter(inputs, shard_bytes=per_shard * 90) as w:
        for d in docs:
            w.write(d)
    run_blocks(w.paths, [], mixture, ExecutorConfig(workers=1, task_bytes=6_000), tmp_path / name, tmp_path / f"work-{name}",
               seed=seed, progress=False)
    out = list(read_shards(shard_paths(tmp_path / name / "shards")))
    report = json.loads((tmp_path / name / "mixture.json").read_text())
    return out, report


def originals(out: list[Document]) -> Counter:
    return Counter(d.id.split("#")[0] for d in out)


def test_integer_weights_repeat_every_document_exactly(tmp_path):
    docs = corpus(50)
    out, report = mix(tmp_path, docs, Mixture(weights={"wiki": 3.0, "code": 0.0}, quality_key=None))
    copies = originals(out)
    assert all(copies[d.id] == 3 for d in docs if d.source == "wiki")
    assert all(copies[d.id] == 1 for d in docs if d.source == "web")
    assert not any(d.source == "code" for d in out)
    ids = [d.id for d in out]
    assert len(ids) == len(set(ids)) == 200
    rep2 = next(d for d in out if d.id == "wiki0007#rep2")
    assert rep2.meta == {"repeat": 2} and rep2.text == docs[3 * 7 + 1].text
    assert "repeat" not in next(d for d in out if d.id == "wiki0007").meta
    # Within a shard, all first copies come before any repeat.
    for path in shard_paths(tmp_path / "out" / "shards"):
        repeats = [d.meta.get("repeat", 0) for d in read_shards([path])]
        assert repeats == sorted(repeats)

    wiki, web, code = report["domains"]["wiki"], report["domains"]["web"], report["domains"]["code"]
    size = len(docs[0].text.encode())
    assert (wiki["docs_before"], wiki["bytes_before"], wiki["docs_after"], wiki["bytes_after"]) == (50, 50 * size, 150, 150 * size)
    assert (code["weight"], code["docs_after"], code["effective_share"]) == (0.0, 0, 0.0)
    assert web["raw_share"] == round(1 / 3, 4) and web["effective_share"] == 0.25 and wiki["effective_share"] == 0.75
    assert report["docs_by_copies"] == {"0": 50, "1": 50, "3": 50}
    assert (report["docs_before"], report["docs_after"], report["bytes_after"]) == (150, 200, 200 * size)
    assert "<svg" in (tmp_path / "out" / "mixture.svg").read_text()


@pytest.mark.parametrize("weight,expected", [(0.5, 50), (0.25, 25), (0.3, 30), (2.5, 250), (1.7, 170)])
def test_fractional_weights_give_exact_counts(tmp_path, weight, expected):
    out, _ = mix(tmp_path, corpus(100), Mixture(weights={"web": weight}, quality_key=None))
    copies = originals(out)
    assert sum(n for i, n in copies.items() if i.startswith("web")) == expected
    # Fractional parts spread evenly: every document gets floor(w) or ceil(w) copies.
    web = [copies[f"web{i:04d}"] for i in range(100)]
    assert set(web) <= {int(weight), int(weight) + 1}


def test_the_choice_follows_the_seed_not_the_corpus_order(tmp_path):
    docs = corpus(100)
    mixture = Mixture(weights={"web": 0.5, "wiki": 1.5}, quality_key=None)
    first, _ = mix(tmp_path, docs, mixture, per_shard=17, name="first")
    again, _ = mix(tmp_path, docs, mixture, per_shard=17, name="again")
    other, _ = mix(tmp_path, docs, mixture, seed=5, per_shard=17, name="other")
    one_shard, _ = mix(tmp_path, docs, mixture, per_shard=10_000, name="one_shard")
    assert [d.to_dict() for d in first] == [d.to_dict() for d in again]
    assert originals(other) != originals(first)
    for out in (other, one_shard):  # the same counts, other documents
        assert sum(originals(out).values()) == sum(originals(first).values()) == 100 + 50 + 150
    # Not every other document, as systematic sampling in corpus order would pick.
    kept = [int(i[3:]) for i in originals(one_shard) if i.startswith("web")]
    assert 10 < sum(1 for k in kept if k % 2 == 0) < 40


def test_quality_oversampling_moves_weight_within_a_domain(tmp_path):
    docs = corpus(300, labels=("head", "middle", "tail"))
    out, report = mix(tmp_path, docs, Mixture(weights={"wiki": 2.0}))
    copies = originals(out)
    size = len(docs[0].text.encode())
    # Equal sizes: the multipliers 2 / 1 / 0.5 normalised to keep the domain's total; each
    # document gets the floor or the ceiling of its rate.
    for domain, w in (("web", 1.0), ("wiki", 2.0)):
        rates = {"head": 2 * w / 3.5 * 3, "middle": w / 3.5 * 3, "tail": 0.5 * w / 3.5 * 3}
        for label, rate in rates.items():
            got = [copies[d.id] for d in docs if d.source == domain and d.meta["ppl_bucket"] == label]
            assert set(got) <= {int(rate), int(rate) + 1}
            assert abs(sum(got) - 100 * rate) <= 15, (domain, label, sum(got), rate)  # about 3 sd
        entry = report["domains"][domain]
        assert abs(entry["docs_after"] - 300 * w) <= 1
        assert entry["by_quality"]["head"] == {"docs": 100, "bytes": 100 * size, "multiplier": 2.0, "rate": round(rates["head"], 4)}
    assert report["quality_key"] == "ppl_bucket"


def test_a_numeric_quality_score_is_labelled_by_thresholds():
    m = Mixture(quality_key="quality")
    labels = [m.label(Document("x", "t", "web", {"quality": q})) for q in (0.95, 0.7, 0.5, 0.3, 0.1, 0.0)]
    assert labels == ["head", "head", "middle", "middle", "tail", "tail"]
    assert m.label(Document("x", "t", "web", {})) == m.label(Document("x", "t", "web", {"quality": True})) == "other"
    assert Mixture(quality_key="quality", quality_thresholds={"head": 0.5}).label(Document("x", "t", "web", {"quality": 0.2})) == "other"


def test_a_budget_scales_every_weight(tmp_path):
    docs = corpus(100)
    size = len(docs[0].text.encode())
    out, report = mix(tmp_path, docs, Mixture(weights={"wiki": 3.0}, quality_key=None, target_bytes=1000 * size))
    assert report["scale"] == 2.0 and report["target_bytes"] == 1000 * size  # 1000 / (3 + 1 + 1) / 100
    assert abs(report["bytes_after"] - 1000 * size) <= 3 * size
    assert report["domains"]["wiki"]["docs_after"] == 3 * report["domains"]["web"]["docs_after"]
    _, tokens = mix(tmp_path, docs, Mixture(quality_key=None, target_tokens=250 * size), name="tokens")
    assert tokens["target_bytes"] == 1000 * size


def test_disabled_mixture_writes_every_document_once(tmp_path):
    docs = corpus(20, labels=("head", "tail"))
    out, report = mix(tmp_path, docs, Mixture(enabled=False, weights={"wiki": 3.0}, target_bytes=10))
    assert [d.to_dict() for d in out] == [d.to_dict() for d in docs]
    assert report["domains"]["wiki"]["weight"] == 1.0 and report["scale"] == 1.0


def test_invalid_settings_are_rejected():
    with pytest.raises(ValidationError, match="weights.web must be >= 0"):
        Mixture(weights={"web": -1})
    with pytest.raises(ValidationError, match="not both"):
        Mixture(target_bytes=10, target_tokens=10)
    with pytest.raises(ValidationError, match="extra"):
        Mixture(weight={"web": 1})
