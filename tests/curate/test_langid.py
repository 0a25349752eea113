"""Language ID: the allow-list, the confidence threshold, the classified prefix, the domains."""

from __future__ import annotations

import pickle

import pytest
from harness import run_pipeline
from pydantic import ValidationError

from tokenmill.curate.block import BlockStats
from tokenmill.curate.langid import LanguageFilter, classify, identifier
from tokenmill.sources.document import Document

TEXTS = {
    "en": "The city council voted on Tuesday to approve a renovation of the Main Street library, ending more "
    "than two years of debate over the future of the building.",
    "fr": "Le conseil municipal a voté mardi en faveur de la rénovation de la bibliothèque de la rue principale, "
    "mettant fin à plus de deux ans de débats sur l'avenir du bâtiment.",
    "de": "Der Stadtrat hat am Dienstag der Renovierung der Bibliothek in der Hauptstraße zugestimmt und damit "
    "eine mehr als zweijährige Debatte über die Zukunft des Gebäudes beendet.",
    "zh": "市议会周二投票批准翻修主街图书馆，结束了关于这座百年建筑未来的两年多的争论。",
}
CODE = "for (i = 0; i < n; i++) { x[i] = y[i] * 2; }\nreturn x;"
SHORT_ENGLISH = "Contact us today"  # English, but too little of it to be sure


def run(block: LanguageFilter, text: str, domain: str = "web") -> tuple[Document | None, Document, BlockStats]:
    doc = Document("doc", text, domain)
    stats = BlockStats(block.name)
    return block.apply(doc, stats), doc, stats


@pytest.mark.parametrize("lang", sorted(TEXTS))
def test_identifies_the_language(lang):
    found, score = classify(TEXTS[lang], 4000)
    assert found == lang and score > 0.9


def test_keeps_english_and_records_the_language():
    out, doc, stats = run(LanguageFilter(), TEXTS["en"])
    assert out is doc
    assert doc.meta["lang"] == "en" and doc.meta["lang_score"] > 0.99
    assert not stats.removed


@pytest.mark.parametrize("lang", ["fr", "de", "zh"])
def test_removes_languages_not_allowed(lang):
    out, doc, stats = run(LanguageFilter(), TEXTS[lang])
    assert out is None
    assert dict(stats.removed) == {"language.not_allowed": 1}
    assert stats.samples["language.not_allowed"][0]["detail"] == lang
    assert doc.meta["lang"] == lang


def test_allow_list():
    block = LanguageFilter(languages=["en", "fr"])
    for lang in ("en", "fr"):
        assert run(block, TEXTS[lang])[0] is not None
    assert run(block, TEXTS["de"])[0] is None
    assert run(LanguageFilter(languages=["de"]), TEXTS["en"])[0] is None


def test_confidence_threshold():
    score = classify(SHORT_ENGLISH, 4000)[1]
    assert 0.4 < score < 0.65
    out, doc, stats = run(LanguageFilter(), SHORT_ENGLISH)
    assert out is None and dict(stats.removed) == {"language.low_confidence": 1}
    assert doc.meta == {"lang": "en", "lang_score": round(score, 4)}
    assert run(LanguageFilter(min_score=0.4), SHORT_ENGLISH)[0] is not None


def test_code_is_no_language_with_confidence():
    out, _, stats = run(LanguageFilter(), CODE)
    assert out is None and dict(stats.removed) == {"language.low_confidence": 1}
    # without a threshold, its best guess is still not English
    out, doc, stats = run(LanguageFilter(min_score=0.0), CODE)
    assert out is None and dict(stats.removed) == {"language.not_allowed": 1}
    assert doc.meta["lang"] != "en"


def test_only_the_first_max_chars_are_classified():
    text = TEXTS["fr"] + "\n\n" + " ".join([TEXTS["en"]] * 20)
    assert run(LanguageFilter(), text)[1].meta["lang"] == "en"
    assert run(LanguageFilter(max_chars=len(TEXTS["fr"])), text)[1].meta["lang"] == "fr"


def test_layout_whitespace_does_not_change_the_verdict():
    indented = "\n".join("        " + word for word in TEXTS["en"].split())
    assert classify(indented, 4000) == classify(TEXTS["en"], 4000)
    assert identifier().classify(indented)[1] < 0.8  # what the model makes of the raw layout


def test_prose_domains_by_default_not_code():
    block = LanguageFilter()
    for domain in ("web", "wiki", "books", "papers", "reference", "manuals", "legal"):
        assert block.applies_to(Document("a", "", domain))
    assert not block.applies_to(Document("a", "", "code"))


def test_unknown_language_code_is_a_config_error():
    with pytest.raises(ValidationError, match="english"):
        LanguageFilter(languages=["english"])


def test_pickles_without_the_model():
    block = LanguageFilter()
    run(block, TEXTS["en"])
    assert len(pickle.dumps(block)) < 2_000


def test_in_the_pipeline_enabled_disabled_and_code_left_alone(tmp_path):
    docs = [
        Document("en", TEXTS["en"], "web"),
        Document("fr", TEXTS["fr"], "web"),
        Document("fr_comment", "# Calcule la surface du cercle.\ndef surface(r):\n    return 3.14 * r * r\n", "code"),
    ]
    stats, kept = run_pipeline(tmp_path, [LanguageFilter()], docs, "on")
    assert sorted(kept) == ["en", "fr_comment"]
    assert kept["en"].meta["lang"] == "en" and "lang" not in kept["fr_comment"].meta
    (entry,) = stats["blocks"]
    assert entry["removed"]["language.not_allowed"]["docs"] == 1

    stats, kept = run_pipeline(tmp_path, [LanguageFilter(enabled=False)], docs, "off")
    assert sorted(kept) == ["en", "fr", "fr_comment"] and stats["disabled_blocks"] == ["language"]
