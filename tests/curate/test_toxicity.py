import json
import pickle
from pathlib import Path

import numpy as np
import profanity_check
import pytest
from harness import run_pipeline
from pydantic import ValidationError

from tokenmill.curate.block import BlockStats
from tokenmill.curate.toxicity import DEFAULT_THRESHOLD, ToxicityFilter, windows
from tokenmill.sources.document import Document

LABELLED = [
    json.loads(line)
    for line in (Path(__file__).parent.parent / "data" / "toxicity_labelled.jsonl").read_text(encoding="utf-8").splitlines()
]
BLOCK = ToxicityFilter()


def test_probabilities_match_profanity_check():
    texts = [r["text"] for r in LABELLED] + ["", "kill -9 1234", "Ünïcødé and 日本語 text", "a " * 5000]
    np.testing.assert_allclose(BLOCK.probabilities(texts), profanity_check.predict_prob(texts), rtol=0, atol=1e-12)


def test_score_is_the_length_weighted_mean_over_windows():
    text = "\n".join(r["text"] for r in LABELLED[:12])
    pieces = windows(text, BLOCK.window_chars)
    assert len(pieces) > 3 and all(len(p) <= BLOCK.window_chars for p in pieces)
    assert " ".join(pieces) == " ".join(text.split())  # nothing lost, nothing reordered
    lengths = np.array([len(p) for p in pieces])
    expected = float(profanity_check.predict_prob(pieces) @ lengths / lengths.sum())
    assert BLOCK.score(text) == pytest.approx(expected, abs=1e-12)
    assert BLOCK.score("") == 0.0 and BLOCK.score("\n\n  \n") == 0.0


def test_windows_keep_a_long_sentence_whole():
    long_sentence = "word " * 100
    assert windows(f"Short one. {long_sentence}\nEnd.", 50) == ["Short one.", long_sentence.strip(), "End."]


def test_labelled_set_at_the_default_threshold():
    # The calibration (benchmarks/toxicity_calibration.py) chose this threshold; these are the
    # written rows it gets wrong, which the user documentation names as the model's limits.
    assert DEFAULT_THRESHOLD == 0.8 and BLOCK.window_chars == 200
    scores = {r["text"]: BLOCK.score(r["text"]) for r in LABELLED}
    false_pos = sorted(r["text"][:30] for r in LABELLED if r["label"] == 0 and scores[r["text"]] >= DEFAULT_THRESHOLD)
    false_neg = sorted(r["text"][:30] for r in LABELLED if r["label"] == 1 and scores[r["text"]] < DEFAULT_THRESHOLD)
    assert false_pos == [
        "Dick Grayson became the first ",
        "The bitch, a female dog, whelp",
        "The rooster, or cock, crows at",
        "Under section 1 of the Sexual ",
    ]
    assert false_neg == ["People like you are a cancer o", "Re: build fails on ARM\n\nDid yo"]
    toxic = sum(r["label"] for r in LABELLED)
    assert (toxic, len(LABELLED) - toxic) == (57, 85)


def test_toxic_documents_are_removed_with_score_and_reason():
    stats = BlockStats("toxicity")
    toxic = [r for r in LABELLED if r["label"] == 1 and len(r["text"]) > 200]
    assert len(toxic) >= 5
    removed = 0
    for i, r in enumerate(toxic):
        doc = Document(f"t{i}", r["text"], "web")
        if BLOCK.apply(doc, stats) is None:
            removed += 1
            assert doc.meta["toxicity"] >= DEFAULT_THRESHOLD
    assert removed == len(toxic) - 1  # the "Re: build fails on ARM" rant: rude without a swear word
    assert dict(stats.removed) == {"toxicity.score": removed}
    sample = stats.samples["toxicity.score"][0]
    assert sample["detail"].startswith("toxicity=0.9") and sample["source"] == "web"


BENIGN = {
    "medical": "Patient information leaflet: genital herpes",
    "legal": "The appeal concerns a conviction for harassment",
    "historical": "Chapter 7. The March on Washington",
    "literature": "The sergeant swore under his breath",
    "changelog": "Package: rsyslog",
    "speech": "One hundred years later, the Negro still is not free",
}


@pytest.mark.parametrize("kind", BENIGN)
def test_benign_medical_legal_historical_documents_are_kept(kind):
    text = next(r["text"] for r in LABELLED if r["text"].startswith(BENIGN[kind]))
    doc = Document(kind, text, "web")
    assert BLOCK.apply(doc, BlockStats("toxicity")) is doc
    assert 0.0 < doc.meta["toxicity"] < DEFAULT_THRESHOLD


def test_threshold_both_sides():
    text = next(r["text"] for r in LABELLED if r["text"].startswith(BENIGN["medical"]))
    score = BLOCK.score(text)
    stats = BlockStats("toxicity")
    assert ToxicityFilter(threshold=score + 1e-6).apply(Document("a", text, "web"), stats) is not None
    assert ToxicityFilter(threshold=score - 1e-6).apply(Document("b", text, "web"), stats) is None
    assert dict(stats.removed) == {"toxicity.score": 1}
    with pytest.raises(ValidationError):
        ToxicityFilter(threshold=1.5)


def test_block_pickles_without_its_model():
    block = ToxicityFilter(threshold=0.7)
    block.score("load the model")
    copy = pickle.loads(pickle.dumps(block))
    assert copy._model is None and copy.threshold == 0.7
    assert copy.score("you are a fucking idiot") == block.score("you are a fucking idiot")


def test_in_the_pipeline_enabled_disabled_and_code_left_alone(tmp_path):
    rant = next(r["text"] for r in LABELLED if r["text"].startswith("Re: Re: Re: banned again"))
    docs = [
        Document("rant", rant, "web"),
        Document("leaflet", next(r["text"] for r in LABELLED if r["text"].startswith(BENIGN["medical"])), "web"),
        Document("script", "# kill the fucking zombie processes, you stupid useless shit\nos.kill(pid, 9)\n", "code"),
        Document("manual", "kill - send a signal to a process. The default signal is TERM.", "manuals"),
    ]
    stats, kept = run_pipeline(tmp_path, [ToxicityFilter()], docs, "on")
    assert sorted(kept) == ["leaflet", "manual", "script"]
    assert "toxicity" in kept["leaflet"].meta and "toxicity" not in kept["script"].meta
    (entry,) = stats["blocks"]
    assert entry["name"] == "toxicity" and entry["removed"]["toxicity.score"]["docs"] == 1
    assert entry["removed_share_by_domain"] == {"code": 0.0, "manuals": 0.0, "web": 0.5}
    assert entry["counters"] == {"outside_domains": 1}

    stats, kept = run_pipeline(tmp_path, [ToxicityFilter(enabled=False)], docs, "off")
    assert sorted(kept) == ["leaflet", "manual", "rant", "script"]
    assert stats["disabled_blocks"] == ["toxicity"] and stats["blocks"] == []

    stats, kept = run_pipeline(tmp_path, [ToxicityFilter(domains=None)], docs, "all")
    assert sorted(kept) == ["leaflet", "manual"]  # on code too when asked
