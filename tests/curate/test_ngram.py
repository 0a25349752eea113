"""The n-gram LM: modified Kneser–Ney against a textbook implementation, normalisation, KenLM parity."""

import random
from collections import Counter

import numpy as np
import pytest

from tokenmill.curate.ngram import BOS, EOS, UNK, NGramLM, normalize, paragraphs, tokenize
from tokenmill.errors import TokenmillError

NOUNS = "cat dog bird fish horse cow sheep goat mouse rat".split()
VERBS = "sees chases likes feeds finds meets".split()
ADJS = "big small red old young happy".split()


def grammar_sentence(rng: random.Random) -> list[str]:
    """A sentence of a tiny language with real structure for an n-gram model to learn."""
    s = ["the", rng.choice(ADJS), rng.choice(NOUNS), rng.choice(VERBS), "the", rng.choice(NOUNS)]
    if rng.random() < 0.4:
        s += ["and", rng.choice(VERBS), "a", rng.choice(NOUNS)]
    return s + ["."]


def random_corpus(seed: int, n: int = 300) -> list[list[str]]:
    """Uneven random sentences: enough repeats at every order for all count-of-counts n1..n4."""
    rng = random.Random(seed)
    words = "a b c d e f g h i j k l m n o".split()
    return [[rng.choice(words[: rng.randint(3, len(words))]) for _ in range(rng.randint(1, 12))] for _ in range(n)]


# --- a textbook implementation (Chen & Goodman 1998, as KenLM's lmplz estimates), for comparison


class TextbookKN:
    def __init__(self, sentences: list[list[str]], order: int, min_count: int) -> None:
        counts = Counter(w for s in sentences for w in s)
        keep = {w for w, c in counts.items() if c >= min_count}
        sents = [[BOS] + [w if w in keep else UNK for w in s] + [EOS] for s in sentences]
        self.order = order
        self.vocab = sorted(keep | {UNK, EOS})  # what can be predicted: every word but <s>
        raw = Counter(tuple(s[i : i + n]) for s in sents for n in range(1, order + 1) for i in range(len(s) - n + 1))
        left = {}
        for g in raw:
            if len(g) > 1:
                left.setdefault(g[1:], set()).add(g[0])
        # Highest order and n-grams starting with <s>: raw counts; others: distinct left extensions.
        self.a = {g: c if len(g) == order or g[0] == BOS else len(left[g]) for g, c in raw.items()}
        self.d = {}
        for n in range(1, order + 1):
            cc = Counter(c for g, c in self.a.items() if len(g) == n and g != (BOS,))
            n1, n2, n3, n4 = (cc[k] for k in (1, 2, 3, 4))
            d = (0.5, 1.0, 1.5)  # lmplz's fallback when the count-of-counts leave them undefined
            if min(n1, n2, n3, n4) > 0:
                y = n1 / (n1 + 2 * n2)
                est = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
                if all(0 < dk < k for k, dk in enumerate(est, start=1)):
                    d = est
            self.d[n] = (0.0, *d)
        self.children = {}
        for g, c in self.a.items():
            self.children.setdefault(g[:-1], {})[g[-1]] = c

    def discount(self, n: int, c: int) -> float:
        return self.d[n][min(c, 3)]

    def prob(self, w: str, ctx: tuple[str, ...]) -> float:
        ctx = ctx[len(ctx) - (self.order - 1) :] if len(ctx) >= self.order else ctx
        n = len(ctx) + 1
        if n == 1:
            kids = {x: c for x, c in self.children[()].items() if x != BOS}
            denom = sum(kids.values())
            gamma = sum(self.discount(1, c) for c in kids.values()) / denom
            c = kids.get(w, 0)
            return (c - self.discount(1, c) if c else 0.0) / denom + gamma / len(self.vocab)
        kids = self.children.get(ctx)
        if not kids:
            return self.prob(w, ctx[1:])
        denom = sum(kids.values())
        gamma = sum(self.discount(n, c) for c in kids.values()) / denom
        c = kids.get(w, 0)
        return (c - self.discount(n, c) if c else 0.0) / denom + gamma * self.prob(w, ctx[1:])


def contexts(sentences: list[list[str]], order: int) -> set[tuple[str, ...]]:
    out = {(), ("zzz",), ("zzz", "a"), ("a", "zzz")}
    for s in sentences:
        s = [BOS] + s
        for i in range(len(s)):
            for n in range(1, order):
                if i - n + 1 >= 0:
                    out.add(tuple(s[i - n + 1 : i + 1]))
    return out


@pytest.mark.parametrize("order,min_count", [(3, 1), (4, 2)])
def test_probabilities_equal_textbook_kneser_ney(order, min_count):
    corpus = random_corpus(seed=order)
    lm = NGramLM.train(corpus, order=order, min_count=min_count)
    ref = TextbookKN(corpus, order, min_count)
    assert sorted(w for w in lm.vocab if w != BOS) == ref.vocab
    known = set(ref.vocab) | {BOS}
    worst = 0.0
    for ctx in contexts(corpus[:60], order):
        mapped = tuple(x if x in known else UNK for x in ctx)
        for w in ref.vocab:
            expected = np.log10(ref.prob(w, mapped))
            worst = max(worst, abs(lm.log10_prob(w, list(ctx)) - expected))
    assert worst < 1e-5  # probabilities are stored as float32, as KenLM stores them


@pytest.mark.parametrize("order", [2, 3, 5])
def test_probabilities_sum_to_one_in_every_context(order):
    corpus = random_corpus(seed=10 + order)
    lm = NGramLM.train(corpus, order=order, min_count=2)
    predictable = [w for w in lm.vocab if w != BOS]
    for ctx in contexts(corpus[:30], order):
        total = sum(10 ** lm.log10_prob(w, list(ctx)) for w in predictable)
        assert total == pytest.approx(1.0, abs=1e-5), ctx
    assert lm.log10_prob(BOS, ["a"]) < -90  # <s> is never predicted


def test_vectorised_scoring_equals_word_by_word_lookup():
    corpus = random_corpus(seed=3)
    lm = NGramLM.train(corpus, order=4, min_count=2)
    for s in corpus[:40] + [["zzz", "a", "qq", "b"], ["a"]]:
        total, n = lm.score_sentences([s])
        ctx, expected = [BOS], 0.0
        for w in s + [EOS]:
            expected += lm.log10_prob(w, ctx)
            ctx.append(w)
        assert n == len(s) + 1
        assert total == pytest.approx(expected, abs=1e-9)


def test_kenlm_scores_our_arpa_file_identically(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    corpus = random_corpus(seed=5)
    lm = NGramLM.train(corpus, order=5, min_count=2)
    arpa = tmp_path / "lm.arpa"
    lm.write_arpa(arpa)
    model = kenlm.Model(str(arpa))
    assert model.order == 5
    for s in random_corpus(seed=99, n=50) + [["zzz", "a", "qq"], ["o", "o", "o", "o", "o", "o"]]:
        sentence = " ".join(s)
        ours = []
        ctx = [BOS]
        for w in s + [EOS]:
            ours.append(lm.log10_prob(w, ctx))
            ctx.append(w)
        theirs = [p for p, _, _ in model.full_scores(sentence, bos=True, eos=True)]
        np.testing.assert_allclose(ours, theirs, atol=1e-5)
        assert model.score(sentence, bos=True, eos=True) == pytest.approx(lm.score_sentences([s])[0], abs=1e-4)


def test_perplexity_is_lowest_on_text_like_the_training_text():
    rng = random.Random(0)
    lm = NGramLM.train([grammar_sentence(rng) for _ in range(2000)], order=4)
    held_out = [grammar_sentence(rng) for _ in range(50)]
    shuffled = [rng.sample(s, len(s)) for s in held_out]
    gibberish = [["".join(rng.choice("qxzjvk") for _ in range(6)) for _ in s] for s in held_out]
    as_text = lambda sents: "\n\n".join(" ".join(s) for s in sents)  # noqa: E731
    in_domain, _ = lm.perplexity(as_text(held_out))
    assert in_domain < 5  # the language has a handful of choices per word
    assert lm.perplexity(as_text(shuffled))[0] > 5 * in_domain
    assert lm.perplexity(as_text(gibberish))[0] > 50 * in_domain


def test_perplexity_is_ccnet_length_weighted_over_paragraphs():
    rng = random.Random(1)
    lm = NGramLM.train([grammar_sentence(rng) for _ in range(500)], order=3)
    a, b = "the big cat sees the dog .", "the old cow feeds the rat and likes a bird ."
    ppl, n = lm.perplexity(f"{a}\n\n  \n{b}\n")
    la, na = lm.score_sentences([tokenize(a)])
    lb, nb = lm.score_sentences([tokenize(b)])
    assert n == na + nb == 8 + 12
    assert ppl == pytest.approx(10 ** (-(la + lb) / (na + nb)))
    assert lm.perplexity("  \n\n ") == (pytest.approx(float("nan"), nan_ok=True), 0)


def test_normalisation_follows_ccnet():
    assert normalize("Héllo WORLD 2024") == "hello world 0000"
    assert normalize("«Ça» – oui…\x07") == '"ca" - oui...'
    assert tokenize("Don't stop: x=42!!!") == ["don", "'", "t", "stop", ":", "x", "=", "00", "!"]
    assert tokenize("Title\n=====\n") == ["title", "="]  # a ruler line is one token
    assert list(paragraphs("One line\nwrapped here.\n\n\nNext  paragraph")) == [
        ["one", "line", "wrapped", "here", "."],
        ["next", "paragraph"],
    ]


def test_rare_and_unknown_words_share_the_unk_probability():
    corpus = [["a", "b", "c"]] * 5 + [["a", "rare", "c"]]
    lm = NGramLM.train(corpus, order=3, min_count=2)
    assert "rare" not in lm.vocab and UNK in lm.vocab
    assert lm.log10_prob("rare", [BOS, "a"]) == lm.log10_prob("never-seen", [BOS, "a"]) > -2


def test_vocabulary_cap_keeps_the_most_frequent_words():
    corpus = [["x"] * 5 + ["y"] * 3 + ["z"] * 2]
    lm = NGramLM.train(corpus, order=2, min_count=1, max_vocab=2)
    assert lm.vocab == [UNK, BOS, EOS, "x", "y"]


def test_save_load_round_trip_and_determinism(tmp_path):
    corpus = random_corpus(seed=7)
    a, b = NGramLM.train(corpus, order=4), NGramLM.train(corpus, order=4)
    a.save(tmp_path / "lm.npz")
    loaded = NGramLM.load(tmp_path / "lm.npz")
    for m in (b, loaded):
        assert m.vocab == a.vocab and m.discounts == a.discounts
        for n in range(4):
            np.testing.assert_array_equal(m.ngrams[n], a.ngrams[n])
            np.testing.assert_array_equal(m.logprob[n], a.logprob[n])
            np.testing.assert_array_equal(m.backoff[n], a.backoff[n])
    text = "a b c\n\nd e zzz f"
    assert loaded.perplexity(text) == a.perplexity(text)


def test_sentences_shorter_than_the_order():
    lm = NGramLM.train([["a"], ["b"], ["a"]], order=5, min_count=1)
    assert lm.summary()["ngrams"][4] == 0
    predictable = [w for w in lm.vocab if w != BOS]
    assert sum(10 ** lm.log10_prob(w, [BOS]) for w in predictable) == pytest.approx(1.0, abs=1e-6)
    assert np.isfinite(lm.perplexity("a b a b")[0])


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(TokenmillError, match="order must be at least 2"):
        NGramLM.train([["a"]], order=1)
    with pytest.raises(TokenmillError, match="no text"):
        NGramLM.train([[], []])
    bad = tmp_path / "lm.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(TokenmillError, match="cannot read n-gram model"):
        NGramLM.load(bad)
