"""Training, the frozen folder, parity with transformers and sentencepiece, mixture sampling, bad input."""

from __future__ import annotations

import json
import statistics

import pytest
import sentencepiece
import xxhash
from pydantic import ValidationError
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tokenmill.errors import TokenmillError
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer import SPECIAL_TOKENS, Tokenizer, TokenizerConfig, train_tokenizer
from tokenmill.tokenizer.mixture import copies, multipliers, read_weights

KINDS = ["bpe", "bpe-gpt2", "spm-unigram", "spm-bpe"]


@pytest.mark.parametrize("name", KINDS)
def test_frozen_folder(trained, name):
    folder = trained[name]
    meta = json.loads((folder / "tokenmill_tokenizer.json").read_text())
    tok = Tokenizer.load(folder)
    assert meta["hash"] == tok.hash == xxhash.xxh3_64((folder / "tokenizer.json").read_bytes()).hexdigest()
    assert meta["vocab_size"] == tok.vocab_size <= 1200
    assert meta["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS)} | ({"<unk>": 8} if tok.kind == "spm" else {})
    assert (folder / "tokenizer.model").exists() == (tok.kind == "spm")
    assert meta["encoder"] == ("tiktoken" if tok.kind == "bpe" else "tokenizers")
    for name in ("stats.json", "compression.svg", "vocabulary.svg", "tokenizer_config.json", "special_tokens_map.json"):
        assert (folder / name).stat().st_size > 0
    tok.check_hash(tok.hash)
    with pytest.raises(TokenmillError, match="encoded with tokenizer 0123"):
        tok.check_hash("0123", what="the token shards")


@pytest.mark.parametrize("name", KINDS)
def test_transformers_gives_the_same_ids(trained, documents, name):
    folder = trained[name]
    tok = Tokenizer.load(folder)
    direct = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    auto = AutoTokenizer.from_pretrained(str(folder))
    assert (auto.bos_token_id, auto.eos_token_id, auto.pad_token_id, auto.mask_token_id) == (1, 2, 0, 3)
    for doc in documents[::3]:
        ids = tok.encode(doc.text)
        assert direct(doc.text, add_special_tokens=False)["input_ids"] == ids
        assert auto(doc.text, add_special_tokens=False)["input_ids"] == ids
        assert auto.decode(ids) == doc.text
    literal = "a <|end|> b"
    assert auto(literal, add_special_tokens=False, split_special_tokens=True)["input_ids"] == tok.encode(literal)


def test_sentencepiece_bpe_gives_the_same_ids(trained, documents):
    tok = Tokenizer.load(trained["spm-bpe"])
    sp = sentencepiece.SentencePieceProcessor(model_file=str(trained["spm-bpe"] / "tokenizer.model"))
    for doc in documents:
        assert tok.encode(doc.text) == sp.encode(doc.text)


def test_sentencepiece_unigram_gives_an_equally_good_segmentation(trained, documents):
    """Unigram picks the segmentation of highest total score; where two score the same (runs of
    whitespace pieces in another order), the two libraries may pick differently."""
    tok = Tokenizer.load(trained["spm-unigram"])
    sp = sentencepiece.SentencePieceProcessor(model_file=str(trained["spm-unigram"] / "tokenizer.model"))
    same = 0
    for doc in documents:
        ours, theirs = tok.encode(doc.text), sp.encode(doc.text)
        assert sp.decode(theirs) == tok.decode(ours) == doc.text
        score = lambda ids: sum(sp.get_score(i) for i in ids)  # noqa: E731
        assert score(ours) == pytest.approx(score(theirs), rel=1e-9)
        same += ours == theirs
    assert same >= 0.8 * len(documents)


def test_sentencepiece_ids_differ_only_where_it_loses_text(trained):
    """SentencePiece decodes a literal ▁ as a space; tokenmill keeps it, by its bytes."""
    tok = Tokenizer.load(trained["spm-bpe"])
    sp = sentencepiece.SentencePieceProcessor(model_file=str(trained["spm-bpe"] / "tokenizer.model"))
    assert sp.decode(sp.encode("a\u2581b")) == "a b"
    assert tok.decode(tok.encode("a\u2581b")) == "a\u2581b"
    assert [tok.token_bytes(i) for i in tok.encode("\u2581")] == [b"\xe2", b"\x96", b"\x81"]


@pytest.mark.parametrize("name", ["bpe", "spm-bpe"])
def test_training_is_deterministic(tmp_path, corpus, trained, name):
    first = Tokenizer.load(trained[name])
    again = train_tokenizer(corpus, TokenizerConfig(**first.meta["config"]), tmp_path / "again")
    assert again["hash"] == first.hash


def test_vocabulary_statistics(trained):
    stats = json.loads((trained["bpe"] / "stats.json").read_text())
    tok = Tokenizer.load(trained["bpe"])
    comp = stats["compression"]
    assert set(comp) == {"code", "reference", "world", "all"}
    for row in comp.values():
        assert row["bytes_per_token"] == round(row["bytes"] / row["tokens"], 3)
        assert row["tokens_per_word"] == round(row["tokens"] / row["words"], 3)
    assert comp["all"]["tokens"] == sum(comp[d]["tokens"] for d in ("code", "reference", "world"))
    vocab = stats["vocabulary"]
    assert vocab["tokens"] == tok.vocab_size - 8
    assert vocab["counts"]["partial_utf8"] >= 128  # the byte tokens 0x80-0xFF at least
    assert vocab["counts"]["whitespace"] >= 3 and vocab["counts"]["code_keywords"] >= 5
    assert vocab["counts"]["non_latin"] >= 1
    longest = stats["longest_tokens"]
    assert [t["bytes"] for t in longest] == sorted((t["bytes"] for t in longest), reverse=True)
    assert longest[0]["bytes"] == max(len(tok.token_bytes(i)) for i in range(8, tok.vocab_size))
    code = stats["examples"]["code"]
    assert "".join(code["tokens"]) == code["text"] and code["ids"] == tok.encode(code["text"])


def test_mixture_weights_decide_the_sample(tmp_path, corpus):
    config = TokenizerConfig(vocab_size=400, sample_bytes=None)
    weights = {"domains": {"code": {"weight": 2.0}, "reference": {"weight": 0.0}, "world": {"weight": 1.0}}}
    (tmp_path / "mixture.json").write_text(json.dumps(weights))
    train_tokenizer(corpus, config, tmp_path / "tok", weights=tmp_path / "mixture.json")
    training = json.loads((tmp_path / "tok" / "tokenmill_tokenizer.json").read_text())["training"]
    assert training["weights"] == {"code": 2.0, "reference": 0.0, "world": 1.0}
    corpus_bytes = training["corpus_bytes"]
    assert training["sample_bytes"] == {"code": 2 * corpus_bytes["code"], "world": corpus_bytes["world"]}


def test_byte_budget_scales_every_domain(tmp_path, corpus):
    budget = 120_000
    train_tokenizer(corpus, TokenizerConfig(vocab_size=400, sample_bytes=budget), tmp_path / "tok", seed=1)
    training = json.loads((tmp_path / "tok" / "tokenmill_tokenizer.json").read_text())["training"]
    total = sum(training["corpus_bytes"].values())
    assert set(training["multipliers"].values()) == {round(budget / total, 6)}
    assert 0.6 * budget < sum(training["sample_bytes"].values()) < 1.4 * budget


def test_multipliers_and_copies():
    sizes = {"web": 800, "wiki": 200}
    assert multipliers(sizes, None, None) == {"web": 1.0, "wiki": 1.0}
    assert multipliers(sizes, {"wiki": 3.0}, None) == {"web": 1.0, "wiki": 3.0}  # unnamed domains weigh 1
    assert multipliers(sizes, {"wiki": 3.0}, 700) == {"web": 0.5, "wiki": 1.5}  # 800*0.5 + 200*1.5 = 700
    draws = [copies(f"doc{i}", 2.25, seed=7) for i in range(20_000)]
    assert set(draws) == {2, 3}
    assert statistics.mean(draws) == pytest.approx(2.25, abs=0.02)
    assert draws == [copies(f"doc{i}", 2.25, seed=7) for i in range(20_000)]
    assert draws != [copies(f"doc{i}", 2.25, seed=8) for i in range(20_000)]


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"web": -1}, "weight of domain 'web' must be a number >= 0"),
        ({"web": "x"}, "weight of domain 'web' must be a number >= 0"),
        ({"domains": {"web": {"share": 1}}}, "needs a 'weight'"),
        ({}, "expected"),
        ("/nonexistent/mixture.json", "mixture weights file not found"),
    ],
)
def test_bad_weights(weights, message):
    with pytest.raises(TokenmillError, match=message):
        read_weights(weights)


def test_weights_that_leave_nothing(tmp_path, corpus):
    with pytest.raises(TokenmillError, match="leave no text"):
        train_tokenizer(corpus, TokenizerConfig(vocab_size=400), tmp_path / "t", weights={"code": 0, "reference": 0, "world": 0})


def test_vocab_size_too_small():
    with pytest.raises(ValidationError, match="too small for kind bpe.*use at least 265"):
        TokenizerConfig(kind="bpe", vocab_size=264)
    with pytest.raises(ValidationError, match="too small for kind spm.*use at least 266"):
        TokenizerConfig(kind="spm", vocab_size=265)
    assert TokenizerConfig(kind="bpe", vocab_size=265).vocab_size == 265


def test_vocab_size_too_small_given_directly(tmp_path, corpus):
    config = TokenizerConfig.model_construct(**{**TokenizerConfig().model_dump(), "vocab_size": 100})
    with pytest.raises(TokenmillError, match="vocab_size 100 is too small"):
        train_tokenizer(corpus, config, tmp_path / "t")


def test_empty_corpus(tmp_path):
    with ShardWriter(tmp_path / "empty") as writer:
        writer.write(Document("a", "", "web"))
    with pytest.raises(TokenmillError, match="no text to train the tokenizer on"):
        train_tokenizer(writer.paths, TokenizerConfig(), tmp_path / "t")
    with pytest.raises(TokenmillError, match="no document shards"):
        train_tokenizer([], TokenizerConfig(), tmp_path / "t")
    with pytest.raises(TokenmillError, match="document shard not found"):
        train_tokenizer([tmp_path / "missing.jsonl.zst"], TokenizerConfig(), tmp_path / "t")


def test_missing_or_altered_tokenizer_folder(tmp_path, trained):
    with pytest.raises(TokenmillError, match="tokenizer folder not found"):
        Tokenizer.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TokenmillError, match="is not a tokenizer folder"):
        Tokenizer.load(tmp_path / "empty")
    altered = tmp_path / "altered"
    altered.mkdir()
    for f in trained["bpe"].iterdir():
        (altered / f.name).write_bytes(f.read_bytes())
    (altered / "tokenizer.json").write_text((altered / "tokenizer.json").read_text().replace('"<|end|>"', '"<|stop|>"'))
    with pytest.raises(TokenmillError, match="has changed since the tokenizer was frozen"):
        Tokenizer.load(altered)


def test_custom_pretokenizer_pattern(tmp_path, corpus):
    """A pattern that splits every digit apart: no learned token holds two digits."""
    pattern = r""" ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    train_tokenizer(corpus, TokenizerConfig(vocab_size=600, pretokenizer_pattern=pattern), tmp_path / "t")
    tok = Tokenizer.load(tmp_path / "t")
    assert tok.meta["pattern"] == pattern and tok.meta["encoder"] == "tiktoken"
    assert [tok.decode([i]) for i in tok.encode("x 2718281828")] == ["x", " ", *"2718281828"]
    with pytest.raises(TokenmillError, match="not a valid regular expression"):
        train_tokenizer(corpus, TokenizerConfig(vocab_size=600, pretokenizer_pattern="(unclosed"), tmp_path / "u")


def test_encoder_falls_back_to_tokenizers_when_tiktoken_differs(tmp_path, corpus):
    """tiktoken drops text its pattern does not match; `tokenizers` keeps it as pieces of its own.
    With such a pattern the ids differ, so the tokenizer must encode with `tokenizers`."""
    train_tokenizer(corpus, TokenizerConfig(vocab_size=500, pretokenizer_pattern=r"\p{L}+"), tmp_path / "t")
    tok = Tokenizer.load(tmp_path / "t")
    assert tok.meta["encoder"] == "tokenizers"
    x = "gaps: 1, 2 and  3!\n"
    assert tok.decode(tok.encode(x)) == x
    assert tok.encode(x) == PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "t" / "tokenizer.json"))(x)["input_ids"]
