"""decode(encode(x)) == x for arbitrary Unicode, and ids equal to tokenizer.json's for every kind."""

from __future__ import annotations

import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenmill.tokenizer import SPECIAL_TOKENS, Tokenizer
from tokenmill.tokenizer.tokenizer import clean_text

KINDS = ["bpe", "bpe-gpt2", "spm-unigram", "spm-bpe"]

TRICKY = [
    "👩‍👩‍👧‍👦", "🇫🇷", "👍🏽", "e\u0301", "\u0308", "東京", "한국어", "ﷺ", "\u200b", "\ufeff", "\u2581", "▁▁x",
    "\r\n", "\t", "\x00", "\x1b[0m", "\x7f", "\u2028", "\U0010ffff", "\U000e0001", "<|end|>", "<|bos|>",
    "<0x41>", "<unk>", "  ", "\n\n\n", "'s", "1234567", "def f():", "    return", "\ud7ff", "\ue000",
]
text = st.lists(
    st.one_of(st.text(st.characters(codec="utf-8"), max_size=12), st.sampled_from(TRICKY)), max_size=24
).map("".join)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module", params=KINDS)
def tokenizer_pair(request, trained) -> tuple[Tokenizer, tokenizers.Tokenizer]:
    """A tokenmill tokenizer and its tokenizer.json read by Hugging Face `tokenizers` on its own."""
    tok = Tokenizer.load(trained[request.param])
    reference = tokenizers.Tokenizer.from_file(str(trained[request.param] / "tokenizer.json"))
    reference.encode_special_tokens = True  # tokenmill encodes special-token spellings as text
    return tok, reference


@SETTINGS
@given(x=text)
def test_round_trip(tokenizer_pair, x):
    tok, _ = tokenizer_pair
    assert tok.decode(tok.encode(x)) == x
    assert tok.decode(tok.encode(x, allow_special=True)) == x


@SETTINGS
@given(x=text)
def test_same_ids_as_tokenizer_json(tokenizer_pair, x):
    """tokenmill's encoder (tiktoken's core for BPE) gives exactly the ids of the frozen tokenizer.json."""
    tok, reference = tokenizer_pair
    assert tok.encode(x) == reference.encode(x, add_special_tokens=False).ids


@SETTINGS
@given(xs=st.lists(text, max_size=5))
def test_encode_batch_is_encode_of_each(tokenizer_pair, xs):
    tok, _ = tokenizer_pair
    assert tok.encode_batch(xs) == [tok.encode(x) for x in xs]


@pytest.mark.parametrize(
    "x, cleaned",
    [
        ("a\ud800b", "a\ufffdb"),  # a lone high surrogate
        ("\udfff", "\ufffd"),  # a lone low surrogate
        ("x\ud83d\ude00y", "x😀y"),  # a surrogate pair written as two code points is its character
        ("\ude00\ud83d", "\ufffd\ufffd"),  # the same two in the wrong order are not
        ("plain ✓", "plain ✓"),
    ],
)
def test_lone_surrogates_become_replacement_characters(tokenizer_pair, x, cleaned):
    tok, _ = tokenizer_pair
    assert clean_text(x) == cleaned
    assert tok.encode(x) == tok.encode(cleaned)
    assert tok.decode(tok.encode(x)) == cleaned


def test_special_token_text_stays_text(tokenizer_pair):
    tok, _ = tokenizer_pair
    x = "say <|end|> then <|bos|><|eos|> and <|assistant|>: <|pad|><|mask|>"
    ids = tok.encode(x)
    assert not set(ids) & set(tok.special_ids.values())
    assert tok.decode(ids) == x
    assert tok.encode_batch([x]) == [ids]
    asked = tok.encode(x, allow_special=True)
    assert [i for i in asked if i in tok.special_ids.values()] == [7, 1, 2, 6, 0, 3]
    assert tok.decode(asked) == x
    assert tok.decode(asked, skip_special_tokens=True) == "say  then  and : "


def test_special_ids_are_fixed(tokenizer_pair):
    tok, _ = tokenizer_pair
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(8))
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (0, 1, 2, 3)
    assert (tok.system_id, tok.user_id, tok.assistant_id, tok.end_id) == (4, 5, 6, 7)


def test_token_bytes_spell_the_text(tokenizer_pair):
    tok, _ = tokenizer_pair
    x = "naïve 東京 code:\n    return x  # ok"
    assert b"".join(tok.token_bytes(i) for i in tok.encode(x)) == x.encode("utf-8")
