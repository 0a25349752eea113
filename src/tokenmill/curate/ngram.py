"""A word n-gram language model with interpolated modified Kneser–Ney smoothing, from our own counts.

This is the estimator of KenLM's `lmplz` (Chen & Goodman 1998; Heafield et al. 2013), written
over numpy arrays because KenLM's Python module can score a model but not train one:

- Text is normalised as CCNet does before its LM (lower case, accents stripped, digits to 0,
  Unicode punctuation mapped to ASCII, control characters dropped), then split into words and
  single punctuation marks. A run of one repeated mark ("=====", "----") is one token, so a
  ruler line weighs one token, not forty.
- A "sentence" is a paragraph (text between blank lines, lines joined), wrapped in <s> ... </s>.
  CCNet scores the paragraphs of a web page the same way.
- Words seen fewer than `min_count` times, or beyond the `max_vocab` most frequent, become
  <unk>, which is then an ordinary trained word, so unseen words at scoring time get a
  probability learned from rare words instead of an arbitrary penalty.
- Highest-order n-grams keep their counts; a lower-order n-gram's count is its number of
  distinct left extensions (its continuation count), except for n-grams that begin with <s>,
  which cannot be extended and keep their counts. Discounts D1, D2, D3+ per order come from
  the count-of-counts (D_k = k - (k+1) Y n_{k+1}/n_k, Y = n1/(n1 + 2 n2)); when a small corpus
  leaves them undefined, lmplz's fallback (0.5, 1, 1.5) is used.
- p(w|h) = (a(hw) - D(a(hw))) / sum_x a(hx) + gamma(h) p(w|h'), down to the unigrams, which
  interpolate with the uniform distribution over the vocabulary (less <s>, which is never
  predicted). Stored as log10 probability and log10 backoff gamma(h), this *is* a backoff
  model, so it writes out exactly as an ARPA file and KenLM scores it the same.

N-grams are identified by a 64-bit hash of their word ids, as KenLM's probing tables do: with
a few million n-grams the chance of any collision is below 1e-6. Training holds about 300 bytes
per training token at its peak (the token lists, ids, one hash per order, the sorts), bounded
by `max_tokens`; one core counts and estimates 0.3-0.5M tokens per second.

Scoring looks n-grams up by binary search in sorted hash arrays, one numpy call per order for a
whole document. KenLM's C++ scores the same ARPA file about 5x faster per token, but with the
shared tokenisation counted a document takes only about 2x longer here
(benchmarks/ngram_lm.py); the filter keeps this one scorer so that its results do not depend
on whether an optional package is installed. KenLM's `Model.score` also sums a sentence in
float32; this sums in float64.
"""

from __future__ import annotations

import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import regex

from tokenmill.atomic import atomic_open
from tokenmill.errors import TokenmillError

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
NO_PROB = -99.0  # ARPA's log10 probability of <s>, which is never predicted
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)  # lmplz --discount_fallback

# CCNet's table of Unicode punctuation and its ASCII stand-ins (cc_net/text_normalizer.py).
_UNICODE_PUNCT = {
    "，": ",", "。": ".", "、": ",", "„": '"', "”": '"', "“": '"', "«": '"', "»": '"', "１": '"',
    "」": '"', "「": '"', "《": '"', "》": '"', "´": "'", "∶": ":", "：": ":", "？": "?", "！": "!",
    "（": "(", "）": ")", "；": ";", "–": "-", "—": " - ", "．": ". ", "～": "~", "’": "'",
    "…": "...", "━": "-", "〈": "<", "〉": ">", "【": "[", "】": "]", "％": "%", "►": "-",
}
# A regex touches only the marks it finds; str.translate would look up every character.
_UNICODE_PUNCT_RE = re.compile("[" + "".join(_UNICODE_PUNCT) + "]")
_COMBINING_MARK = regex.compile(r"\p{Mn}+")
_NON_PRINTING = re.compile("[" + "".join(map(chr, [*range(0, 9), *range(11, 32), *range(127, 160)])) + "]")
_DIGIT = re.compile(r"\d")
_REPEATED_MARK = re.compile(r"([^\w\s])\1+")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_PARAGRAPH_BREAK = re.compile(r"\n[^\S\n]*\n\s*")


def normalize(text: str) -> str:
    """CCNet's normalisation: lower case, no accents, digits -> 0, ASCII punctuation, no control characters."""
    text = text.lower()
    if not text.isascii():
        text = _COMBINING_MARK.sub("", unicodedata.normalize("NFD", text))
        text = _UNICODE_PUNCT_RE.sub(lambda m: _UNICODE_PUNCT[m.group()], text)
    return _NON_PRINTING.sub("", _DIGIT.sub("0", text))


def tokenize(text: str) -> list[str]:
    """Normalised words and punctuation marks of one paragraph (a run of one mark is one token)."""
    return _TOKEN.findall(_REPEATED_MARK.sub(r"\1", normalize(text)))


def paragraphs(text: str) -> list[list[str]]:
    """The token lists of the non-empty paragraphs of a document: the model's sentences."""
    out = []
    for para in _PARAGRAPH_BREAK.split(_REPEATED_MARK.sub(r"\1", normalize(text))):
        tokens = _TOKEN.findall(para)
        if tokens:
            out.append(tokens)
    return out


# --- n-gram hashing --------------------------------------------------------------------------

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _extend(key: np.ndarray, word: np.ndarray) -> np.ndarray:
    """Hash of an n-gram from the hash of its last n-1 words and its first word (splitmix64)."""
    z = key * _GOLDEN + word.astype(np.uint64) + np.uint64(1)
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _window_keys(ids: np.ndarray, start: np.ndarray, order: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For n = 1..order: the hash of the n-gram ending at each position, and whether it stays
    inside its sentence. `start[i]` is the position of the <s> of the sentence of position i."""
    pos = np.arange(len(ids))
    keys, valid = [], []
    key = _extend(np.zeros(len(ids), np.uint64), ids)
    for n in range(1, order + 1):
        if n > 1:
            longer = np.zeros(len(ids), np.uint64)
            if n <= len(ids):
                longer[n - 1 :] = _extend(key[n - 1 :], ids[: len(ids) - n + 1])
            key = longer
        keys.append(key)
        valid.append(pos - (n - 1) >= start)
    return keys, valid


def _flatten(sentences: list[list[str]], word_id: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Sentences -> the word ids of `<s> w.. </s> <s> ...` and each position's sentence start."""
    flat: list[str] = []
    for s in sentences:
        flat.append(BOS)
        flat.extend(s)
        flat.append(EOS)
    ids = np.fromiter(map(word_id.__getitem__, flat), np.int32, len(flat))
    lengths = np.fromiter((len(s) + 2 for s in sentences), np.int64, len(sentences))
    starts = np.cumsum(lengths) - lengths
    return ids, np.repeat(starts, lengths)


class _Vocab(dict):
    """word -> id, <unk> for any other word (a plain dict lookup in C for the known ones)."""

    def __missing__(self, word: str) -> int:
        return UNK_ID


class NGramLM:
    """An interpolated modified Kneser–Ney model: per order, sorted n-gram hashes with log10
    probability and log10 backoff, plus the word ids of each n-gram (for the ARPA file)."""

    def __init__(self, vocab: list[str], ngrams: list[np.ndarray], logprob: list[np.ndarray],
                 backoff: list[np.ndarray], discounts: list[tuple[float, float, float]] | None = None) -> None:
        self.vocab = vocab
        self.word_id = _Vocab((w, i) for i, w in enumerate(vocab))
        self.order = len(ngrams)
        self.discounts = discounts or []
        self.keys, self.ngrams, self.logprob, self.backoff = [], [], [], []
        for n, grams in enumerate(ngrams, start=1):
            # Hash each n-gram as scoring will, last word first, and sort the tables by hash.
            key = _extend(np.zeros(len(grams), np.uint64), grams[:, n - 1])
            for j in range(n - 2, -1, -1):
                key = _extend(key, grams[:, j])
            rows = np.argsort(key)
            self.keys.append(key[rows])
            self.ngrams.append(grams[rows])
            self.logprob.append(logprob[n - 1][rows])
            self.backoff.append(backoff[n - 1][rows])

    # --- training ----------------------------------------------------------------------------

    @classmethod
    def train(cls, sentences: Iterable[list[str]], order: int = 5, min_count: int = 2,
              max_vocab: int = 100_000, max_tokens: int = 10_000_000) -> NGramLM:
        """Estimate a model from tokenized sentences: lists of tokens without whitespace, as the
        ARPA format needs. Sentences are taken in order until `max_tokens` words."""
        if order < 2:
            # As in KenLM, whose ARPA reader needs at least bigrams.
            raise TokenmillError(f"n-gram order must be at least 2, got {order}")
        kept, counts, total = [], Counter(), 0
        for s in sentences:
            if total + len(s) > max_tokens and kept:
                break
            if s:
                kept.append(s)
                counts.update(s)
                total += len(s)
        if not kept:
            raise TokenmillError("cannot train an n-gram model on no text")
        counts.pop(UNK, None)
        counts.pop(BOS, None)
        counts.pop(EOS, None)
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        vocab = [UNK, BOS, EOS] + words[:max_vocab]
        ids, start = _flatten(kept, _Vocab((w, i) for i, w in enumerate(vocab)))
        return cls(vocab, *_estimate(ids, start, order, len(vocab)))

    # --- scoring -----------------------------------------------------------------------------

    def score_sentences(self, sentences: list[list[str]]) -> tuple[float, int]:
        """Total log10 probability of the sentences (each with <s> ... </s>) and the number of
        predicted tokens (words plus one </s> per sentence)."""
        ids, start = _flatten(sentences, self.word_id)
        lp = self._log10_probs(ids, start)
        return float(lp.sum()), len(lp)

    def _log10_probs(self, ids: np.ndarray, start: np.ndarray) -> np.ndarray:
        """log10 p of every token but each <s>, by the backoff rule: the longest n-gram found,
        plus the backoff weights of the longer contexts that were not found."""
        keys, valid = _window_keys(ids, start, self.order)
        lp = np.zeros(len(ids))
        matched = np.zeros(len(ids), np.int64)
        bo = []
        # An n-gram can be in the model only if its last n-1 words are, so each order looks up
        # only the positions where the order below was found: on text unlike the reference, few.
        where = np.arange(len(ids))
        for n in range(1, self.order + 1):
            where = where[valid[n - 1][where]]
            idx, found = self._find(n, keys[n - 1][where])
            where, idx = where[found], idx[found]
            lp[where] = self.logprob[n - 1][idx]
            matched[where] = n
            b = np.zeros(len(ids))
            b[where] = self.backoff[n - 1][idx]
            bo.append(b)
        total = lp
        for j in range(1, self.order):
            # The context of length j ends just before the predicted word.
            total[1:] += np.where(j >= matched[1:], bo[j - 1][:-1], 0.0)
        return total[np.arange(len(ids)) > start]

    def _find(self, n: int, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        table = self.keys[n - 1]
        if len(table) == 0:  # a corpus of sentences all shorter than the order
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        idx = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        return idx, table[idx] == keys

    def log10_prob(self, word: str, context: list[str]) -> float:
        """log10 p(word | context), one lookup at a time (the vectorised scorer's reference).
        A context that starts with <s> is the start of a sentence."""
        ctx = [self.word_id[w] for w in context[max(0, len(context) - (self.order - 1)) :]]
        w = self.word_id[word]
        total = 0.0
        for m in range(len(ctx), -1, -1):
            row = self._row(ctx[len(ctx) - m :] + [w])
            if row is not None:
                return total + float(self.logprob[m][row])
            ctx_row = self._row(ctx[len(ctx) - m :])
            if ctx_row is not None:
                total += float(self.backoff[m - 1][ctx_row])
        raise AssertionError("every word id has a unigram")

    def _row(self, gram: list[int]) -> int | None:
        if not gram:
            return None
        key = _extend(np.zeros(1, np.uint64), np.array(gram[-1:]))
        for word in reversed(gram[:-1]):
            key = _extend(key, np.array([word]))
        idx, found = self._find(len(gram), key)
        return int(idx[0]) if found[0] else None

    def perplexity(self, text: str) -> tuple[float, int]:
        """CCNet's document perplexity: 10^(-sum of log10 p / predicted tokens) over its paragraphs."""
        sentences = paragraphs(text)
        if not sentences:
            return float("nan"), 0
        logp, n = self.score_sentences(sentences)
        return 10.0 ** (-logp / n), n

    # --- files -------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """One .npz of plain arrays (no pickle): vocabulary, then per order n-grams, log10 p, backoff."""
        # The vocabulary as UTF-8 lines: a fixed-width string array would pad every word to the longest.
        vocab = np.frombuffer("\n".join(self.vocab).encode("utf-8"), np.uint8)
        arrays = {"vocab": vocab, "discounts": np.array(self.discounts, np.float64).reshape(-1, 3)}
        for n in range(1, self.order + 1):
            arrays[f"ngrams_{n}"] = self.ngrams[n - 1]
            arrays[f"logprob_{n}"] = self.logprob[n - 1]
            arrays[f"backoff_{n}"] = self.backoff[n - 1]
        with atomic_open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> NGramLM:
        try:
            with np.load(path, allow_pickle=False) as z:
                order = sum(1 for k in z.files if k.startswith("ngrams_"))
                return cls(
                    z["vocab"].tobytes().decode("utf-8").split("\n"),
                    [z[f"ngrams_{n}"] for n in range(1, order + 1)],
                    [z[f"logprob_{n}"] for n in range(1, order + 1)],
                    [z[f"backoff_{n}"] for n in range(1, order + 1)],
                    [tuple(d) for d in z["discounts"].tolist()],
                )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise TokenmillError(f"cannot read n-gram model {path}: {e}") from e

    def write_arpa(self, path: str | Path) -> None:
        """The model as an ARPA file, the format KenLM, SRILM and most toolkits read."""
        vocab = np.array(self.vocab, dtype=object)
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for n in range(1, self.order + 1):
                f.write(f"ngram {n}={len(self.ngrams[n - 1])}\n")
            for n in range(1, self.order + 1):
                f.write(f"\n\\{n}-grams:\n")
                grams = self.ngrams[n - 1]
                rows = np.lexsort(grams.T[::-1])  # lexical order of ids: the file diffs cleanly
                words = vocab[grams[rows]]
                # str of a float32 is its shortest exact form, so KenLM reads back the same float.
                lp = self.logprob[n - 1][rows].astype(str)
                if n < self.order:
                    bo = self.backoff[n - 1][rows].astype(str)
                    f.writelines(f"{p}\t{' '.join(w)}\t{b}\n" for p, w, b in zip(lp, words, bo))
                else:
                    f.writelines(f"{p}\t{' '.join(w)}\n" for p, w in zip(lp, words))
            f.write("\n\\end\\\n")

    def summary(self) -> dict:
        return {
            "order": self.order,
            "vocab": len(self.vocab),
            "ngrams": [len(g) for g in self.ngrams],
            "discounts": [[round(d, 4) for d in ds] for ds in self.discounts],
        }


def _estimate(ids: np.ndarray, start: np.ndarray, order: int, vocab_size: int) -> tuple[list, list, list, list]:
    """Counts -> adjusted counts -> discounts -> interpolated probabilities and backoffs."""
    keys, valid = _window_keys(ids, start, order)
    pos = np.arange(len(ids))

    # Adjusted counts, highest order first: table[n] = (hashes, a representative end position, count).
    tables: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    sel = np.flatnonzero(valid[order - 1])
    k, first, count = np.unique(keys[order - 1][sel], return_index=True, return_counts=True)
    tables[order] = (k, sel[first], count)
    for n in range(order - 1, 0, -1):
        # Continuation counts: the distinct (n+1)-grams of which this n-gram is the suffix.
        _, upper_pos, _ = tables[n + 1]
        ck, cfirst, ccount = np.unique(keys[n - 1][upper_pos], return_index=True, return_counts=True)
        # N-grams starting with <s> have no left extension: they keep their counts.
        bos = np.flatnonzero(pos - (n - 1) == start)
        bk, bfirst, bcount = np.unique(keys[n - 1][bos], return_index=True, return_counts=True)
        k = np.concatenate((ck, bk))
        p = np.concatenate((upper_pos[cfirst], bos[bfirst]))
        c = np.concatenate((ccount, bcount))
        o = np.argsort(k)
        tables[n] = (k[o], p[o], c[o])

    # The unigram table holds every vocabulary word (an id that never occurs, usually <unk>, with count 0).
    _, upos, ucount = tables[1]
    a1 = np.zeros(vocab_size, np.int64)
    a1[ids[upos]] = ucount

    ngrams, logprob, backoff, discounts = [], [], [], []
    # Unigrams: interpolate with the uniform distribution over every word but <s>.
    predict = np.arange(vocab_size) != BOS_ID
    d = _discounts(a1[predict])
    discounts.append(d)
    denom = a1[predict].sum()
    gamma = _discount_of(a1[predict], d).sum() / denom
    p1 = np.where(predict, (a1 - _discount_of(a1, d)) / denom + gamma / predict.sum(), 0.0)
    ngrams.append(np.arange(vocab_size, dtype=np.int32)[:, None])
    prob = [p1]  # interpolated probability per order, in the order of `ngrams`
    lookup = [_extend(np.zeros(vocab_size, np.uint64), np.arange(vocab_size))]  # hashes in table order
    gammas: list[np.ndarray] = [np.ones(vocab_size)]
    for n in range(2, order + 1):
        k, p, a = tables[n]
        grams = np.stack([ids[p - (n - 1) + j] for j in range(n)], axis=1)
        d = _discounts(a)
        discounts.append(d)
        ctx, inv = np.unique(keys[n - 2][p - 1], return_inverse=True)
        denom = np.bincount(inv, weights=a)
        mass = np.bincount(inv, weights=_discount_of(a, d))
        lower = prob[n - 2][_index(lookup[n - 2], keys[n - 2][p])]
        g = mass / denom
        prob.append((a - _discount_of(a, d)) / denom[inv] + g[inv] * lower)
        # gamma(h) is the backoff weight of the (n-1)-gram h.
        gammas[n - 2][_index(lookup[n - 2], ctx)] = g
        ngrams.append(grams.astype(np.int32))
        lookup.append(k)
        gammas.append(np.ones(len(k)))
    for n in range(order):
        with np.errstate(divide="ignore"):
            lp = np.log10(prob[n])
        if n == 0:
            lp[BOS_ID] = NO_PROB
        logprob.append(lp.astype(np.float32))
        backoff.append(np.log10(gammas[n]).astype(np.float32))
    return ngrams, logprob, backoff, discounts


def _index(table_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Row of each key in a table; every key is there (the prefix and the suffix of a seen
    n-gram are seen n-grams by construction)."""
    order = np.argsort(table_keys)
    rows = order[np.minimum(np.searchsorted(table_keys, keys, sorter=order), len(order) - 1)]
    if not np.array_equal(table_keys[rows], keys):
        raise AssertionError("n-gram table is missing a prefix or suffix")
    return rows


def _discounts(a: np.ndarray) -> tuple[float, float, float]:
    """Modified Kneser–Ney discounts D1, D2, D3+ from the count-of-counts of adjusted counts `a`."""
    n1, n2, n3, n4 = (int((a == k).sum()) for k in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:
        return FALLBACK_DISCOUNTS
    y = n1 / (n1 + 2 * n2)
    d = (1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3)
    if any(not 0 < dk < k for k, dk in enumerate(d, start=1)):
        return FALLBACK_DISCOUNTS
    return d


def _discount_of(a: np.ndarray, d: tuple[float, float, float]) -> np.ndarray:
    return np.select([a == 0, a == 1, a == 2], [0.0, d[0], d[1]], d[2])

