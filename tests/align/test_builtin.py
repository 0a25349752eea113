"""The built-in sets: derived from the corpus's own documentation, held out by item, and the
same for the same seed."""

from __future__ import annotations

import json
import textwrap

import pytest
from align_corpus import documents, man_page

from tokenmill.align.builtin import BuiltinConfig, Item, build_builtin_sets, corpus_items, man_item, summarize
from tokenmill.align.data import load_conversations, load_preferences, load_prompts
from tokenmill.errors import TokenmillError
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document

FILES = ("sft_train", "sft_eval", "pref_train", "pref_eval", "prompts_train", "prompts_eval")
CONFIG = BuiltinConfig(eval_items=30)


@pytest.fixture(scope="module")
def built(corpus_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("builtin")
    return out, build_builtin_sets([corpus_dir], out, CONFIG)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_are_in_the_formats_the_loaders_read(built):
    out, stats = built
    assert {f"{name}.jsonl" for name in FILES} <= {p.name for p in out.iterdir()}
    assert len(load_conversations(out / "sft_train.jsonl")) == stats["sft_train"] == stats["items"] - 30
    assert len(load_preferences(out / "pref_eval.jsonl")) == stats["pref_eval"] == 30
    assert len(load_prompts(out / "prompts_eval.jsonl")) == 30
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["multi_turn_sft_train"] > 0  # some conversations have a second question
    assert stats["items_by_kind"]["command"] == 5 and stats["items_by_kind"]["c_function"] == 1


def test_answers_are_the_items_own_documentation(built):
    out, _ = built
    prefs = read(out / "pref_train.jsonl") + read(out / "pref_eval.jsonl")
    by_item = {p["item"]: p for p in prefs}
    dedent = by_item["textwrap.dedent"]
    assert dedent["chosen"] == "textwrap.dedent: " + summarize(textwrap.dedent.__doc__, CONFIG.max_answer_chars)
    assert dedent["chosen"].startswith("textwrap.dedent: Remove any common leading whitespace from every line")
    assert "textwrap.dedent" in dedent["prompt"][0]["content"] and "Python function" in dedent["prompt"][0]["content"]
    assert by_item["wibble"]["chosen"] == "wibble: Print a line of wibbles."
    assert "the command wibble" in by_item["wibble"]["prompt"][0]["content"]
    assert "the C function zapfd" in by_item["zapfd"]["prompt"][0]["content"]
    for p in prefs:
        assert p["rejected"].startswith(p["rejected_item"] + ": ") and p["rejected_item"] != p["item"]
        assert p["rejected"].split(": ", 1)[1] != p["chosen"].split(": ", 1)[1]


def test_held_out_items_appear_in_no_training_file(built):
    out, _ = built
    held_out = {p["item"] for p in read(out / "pref_eval.jsonl")}
    assert len(held_out) == 30
    train_text = "".join((out / f"{name}.jsonl").read_text() for name in ("sft_train", "pref_train", "prompts_train"))
    for name in held_out:
        assert f'{name}:' not in train_text and f"{name} " not in train_text and f"{name}?" not in train_text
    eval_items = {p["rejected_item"] for p in read(out / "pref_eval.jsonl")}
    assert eval_items <= held_out  # rejected answers come from the same side of the split


def test_same_seed_same_files_other_seed_other_files(built, corpus_dir, tmp_path):
    out, _ = built
    build_builtin_sets([corpus_dir], tmp_path / "again", CONFIG)
    build_builtin_sets([corpus_dir], tmp_path / "other", CONFIG.model_copy(update={"seed": 1}))
    for name in FILES:
        assert (tmp_path / "again" / f"{name}.jsonl").read_bytes() == (out / f"{name}.jsonl").read_bytes()
    assert (tmp_path / "other" / "pref_eval.jsonl").read_bytes() != (out / "pref_eval.jsonl").read_bytes()


def test_items_of_python_source_and_man_pages():
    items = {i.name: i for i in corpus_items(documents(), BuiltinConfig())}
    assert items["heapq"].kind == "module" and items["heapq.heappush"].kind == "function"
    assert items["difflib.SequenceMatcher"].kind == "class"
    assert items["difflib.SequenceMatcher.ratio"].kind == "method"
    assert not any(name.split(".")[-1].startswith("_") for name in items)  # private names are not asked about
    assert items["quuxctl"] == Item("command", "quuxctl", "Control the quux daemon.", "man/man8/quuxctl.8")
    doc = Document("man/man3/gamma.3", man_page("gamma", "3", "(logarithm of the) gamma function").replace(
        "gamma - ", "gamma, gammaf, gammal - "), "manuals")
    assert man_item(doc, 160) is None  # "(logarithm ..." is not a sentence to answer with
    doc = Document("m", man_page("lgamma", "3", "log gamma function").replace("lgamma - ", "lgamma, lgammaf - "), "manuals")
    assert man_item(doc, 160) == Item("c_function", "lgamma", "Log gamma function.", "m")


def test_summaries():
    assert summarize("Return the sum.  More detail follows.\n\nSecond paragraph.", 100) == "Return the sum."
    assert summarize("compute the\n   thing   for x", 100) == "Compute the thing for x."
    assert summarize("Hi.", 100) is None
    assert summarize(" ".join(["word"] * 50), 30) == "Word word word word word word …"


def test_a_corpus_without_enough_documented_items_is_refused(tmp_path):
    with ShardWriter(tmp_path / "shards") as w:
        w.write(Document("web/0", "Nothing documented here.", "web"))
    with pytest.raises(TokenmillError, match="too few to hold out"):
        build_builtin_sets([tmp_path / "shards"], tmp_path / "out", BuiltinConfig())
    with pytest.raises(TokenmillError, match="no document shards"):
        build_builtin_sets([tmp_path / "nothing"], tmp_path / "out", BuiltinConfig())
