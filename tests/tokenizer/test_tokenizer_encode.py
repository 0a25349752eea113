"""Encoding into token shards: exact decode back, the split, determinism across workers, the format."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from tokenmill.errors import TokenmillError
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer import EncodeConfig, Tokenizer, encode_corpus, open_token_shard, token_shard_paths
from tokenmill.tokenizer.encode import is_validation


def documents_in(folder, split):
    return [shard.document(i) for p in token_shard_paths(folder, split) for shard in [open_token_shard(p)] for i in range(shard.n_docs)]


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, corpus, trained):
    out = tmp_path_factory.mktemp("tokens")
    stats = encode_corpus(corpus, trained["bpe"], out, EncodeConfig(val_fraction=0.2, workers=2, chunk_bytes=20_000))
    return out, stats


@pytest.mark.parametrize("name", ["bpe", "spm-unigram"])
def test_shards_decode_back_to_the_documents(tmp_path, corpus, documents, trained, name):
    tok = Tokenizer.load(trained[name])
    encode_corpus(corpus, trained[name], tmp_path, EncodeConfig(val_fraction=0.2, workers=1, chunk_bytes=20_000))
    for split in ("train", "val"):
        expected = [d for d in documents if is_validation(d.id, 0.2) == (split == "val")]
        got = documents_in(tmp_path, split)
        assert len(got) == len(expected) > 0
        for doc, ids in zip(expected, got):
            assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
            assert ids[1:-1].tolist() == tok.encode(doc.text)
            assert tok.decode(ids[1:-1].tolist()) == doc.text


def test_output_is_the_same_for_any_number_of_workers(tmp_path, corpus, trained, encoded):
    out, _ = encoded
    encode_corpus(corpus, trained["bpe"], tmp_path, EncodeConfig(val_fraction=0.2, workers=1, chunk_bytes=50_000))
    for split in ("train", "val"):
        ours = [p.read_bytes() for p in token_shard_paths(tmp_path, split)]
        assert ours == [p.read_bytes() for p in token_shard_paths(out, split)]


def test_encode_stats(encoded, documents):
    out, stats = encoded
    assert json.loads((out / "encode_stats.json").read_text()) == stats
    assert (out / "tokens.svg").stat().st_size > 0
    assert stats["dtype"] == "uint16" and stats["workers"] == 2
    for split in ("train", "val"):
        docs = documents_in(out, split)
        row = stats["splits"][split]
        assert row["documents"] == len(docs)
        assert row["tokens"] == sum(len(d) for d in docs)
        assert row["shards"] == [p.name for p in token_shard_paths(out, split)]
        assert sum(stats["domains"][d][split]["tokens"] for d in stats["domains"]) == row["tokens"]
    assert stats["bytes"] == sum(len(d.text.encode()) for d in documents)
    assert stats["domains"]["code"]["train"]["documents"] + stats["domains"]["code"]["val"]["documents"] == 6
    assert stats["tokenizer"]["hash"] == Tokenizer.load(stats["tokenizer"]["folder"]).hash


def test_validation_split_is_by_document_id():
    ids = [f"doc-{i}" for i in range(20_000)]
    share = sum(is_validation(i, 0.1) for i in ids) / len(ids)
    assert share == pytest.approx(0.1, abs=0.01)
    assert not any(is_validation(i, 0.0) for i in ids)
    # growing the fraction only moves documents from train to validation
    assert all(is_validation(i, 0.2) for i in ids if is_validation(i, 0.1))


def test_header_and_index_layout(encoded):
    """The layout docs/tokenizer.md describes, read with nothing but struct and numpy."""
    out, _ = encoded
    path = token_shard_paths(out, "train")[0]
    data = path.read_bytes()
    magic, version, itemsize, n_tokens, n_docs = struct.unpack_from("<8sIIQQ", data, 0)
    assert (magic, version, itemsize) == (b"TMTOKENS", 1, 2)
    tokens = np.frombuffer(data, dtype="<u2", count=n_tokens, offset=32)
    index_at = 32 + (n_tokens * 2 + 7) // 8 * 8
    offsets = np.frombuffer(data, dtype="<u8", count=n_docs + 1, offset=index_at)
    assert len(data) == index_at + 8 * (n_docs + 1)
    assert offsets[0] == 0 and offsets[-1] == n_tokens and (np.diff(offsets.astype(np.int64)) >= 2).all()
    assert (tokens[offsets[:-1]] == 1).all() and (tokens[offsets[1:] - 1] == 2).all()


def test_small_shards_and_uint32(tmp_path, corpus, trained, encoded):
    out, _ = encoded
    config = EncodeConfig(val_fraction=0.2, workers=1, dtype="uint32", shard_tokens=5_000)
    stats = encode_corpus(corpus, trained["bpe"], tmp_path, config)
    paths = token_shard_paths(tmp_path, "train")
    assert len(paths) == len(stats["splits"]["train"]["shards"]) > 3
    shards = [open_token_shard(p) for p in paths]
    assert all(s.tokens.dtype == np.dtype("<u4") for s in shards)
    # a document never spans two shards; a shard passes shard_tokens only with its one document
    assert all(len(s.tokens) <= 5_000 or s.n_docs == 1 for s in shards)
    assert [d.tolist() for d in documents_in(tmp_path, "train")] == [d.tolist() for d in documents_in(out, "train")]


def test_uint16_refused_for_a_large_vocabulary():
    from tokenmill.tokenizer.tokens import token_dtype

    assert token_dtype(65_536) == np.dtype("<u2") and token_dtype(65_537) == np.dtype("<u4")
    with pytest.raises(TokenmillError, match="uint16 cannot hold"):
        token_dtype(100_000, "uint16")


def test_damaged_shard(tmp_path, encoded):
    out, _ = encoded
    path = token_shard_paths(out, "val")[0]
    (tmp_path / "cut.bin").write_bytes(path.read_bytes()[:-9])
    with pytest.raises(TokenmillError, match="truncated or damaged"):
        open_token_shard(tmp_path / "cut.bin")
    (tmp_path / "other.bin").write_bytes(b"not tokens at all, but long enough for a header")
    with pytest.raises(TokenmillError, match="not a tokenmill token shard"):
        open_token_shard(tmp_path / "other.bin")


def test_bad_inputs(tmp_path, corpus, trained):
    with pytest.raises(TokenmillError, match="tokenizer folder not found"):
        encode_corpus(corpus, tmp_path / "no-tokenizer", tmp_path / "out", EncodeConfig())
    with pytest.raises(TokenmillError, match="no document shards"):
        encode_corpus([], trained["bpe"], tmp_path / "out", EncodeConfig())
    with ShardWriter(tmp_path / "empty") as writer:
        writer.write(Document("a", "", "web"))
    with pytest.raises(TokenmillError, match="no text to encode"):
        encode_corpus(writer.paths, trained["bpe"], tmp_path / "out", EncodeConfig(workers=1))


def test_empty_documents_are_counted_and_left_out(tmp_path, trained):
    with ShardWriter(tmp_path / "docs") as writer:
        for i, text in enumerate(["one", "", "three", ""]):
            writer.write(Document(str(i), text, "web"))
    stats = encode_corpus(writer.paths, trained["bpe"], tmp_path / "out", EncodeConfig(workers=1, val_fraction=0))
    assert stats["skipped_empty"] == 2 and stats["splits"]["train"]["documents"] == 2
    assert stats["splits"]["val"] == {"documents": 0, "tokens": 0, "bytes": 0, "shards": []}


def test_lines_that_are_not_documents_are_counted_with_their_place(tmp_path, trained):
    import zstandard

    lines = [
        json.dumps({"id": "a", "text": "first", "source": "web"}),
        "{not json",
        json.dumps({"id": "b", "source": "web"}),
        "",
        json.dumps({"id": 7, "text": "id is a number", "source": "web"}),
        json.dumps({"id": "c", "text": "last", "source": "web"}),
    ]
    path = tmp_path / "mixed.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    stats = encode_corpus([path], trained["bpe"], tmp_path / "out", EncodeConfig(workers=1, val_fraction=0))
    assert stats["splits"]["train"]["documents"] == 2
    skipped = stats["skipped_unreadable"]
    assert skipped["count"] == 3
    assert [e.split(": ")[0] for e in skipped["examples"]] == [f"{path}:2", f"{path}:3", f"{path}:5"]
    tok = Tokenizer.load(trained["bpe"])
    assert [tok.decode(d[1:-1].tolist()) for d in documents_in(tmp_path / "out", "train")] == ["first", "last"]


def test_truncated_document_shard(tmp_path, corpus, trained):
    cut = tmp_path / "cut.jsonl.zst"
    cut.write_bytes(corpus[0].read_bytes()[:-100])
    with pytest.raises(TokenmillError, match="is truncated"):
        encode_corpus([cut], trained["bpe"], tmp_path / "out", EncodeConfig(workers=1))


def test_lone_surrogates_in_a_shard(tmp_path, trained):
    """JSON may escape a lone surrogate ("\\ud800"); training and encoding replace it with U+FFFD."""
    import zstandard

    from tokenmill.tokenizer import TokenizerConfig, train_tokenizer

    docs = [{"id": f"d{i}\ud800", "text": f"text {i} with a lone \ud800 and a pair \ud83d\ude00", "source": "web"} for i in range(20)]
    path = tmp_path / "odd.jsonl.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(json.dumps(d) + "\n" for d in docs).encode()))
    train_tokenizer([path], TokenizerConfig(vocab_size=300), tmp_path / "tok")
    stats = encode_corpus([path], tmp_path / "tok", tmp_path / "out", EncodeConfig(workers=1, val_fraction=0))
    tok = Tokenizer.load(tmp_path / "tok")
    decoded = [tok.decode(d[1:-1].tolist()) for d in documents_in(tmp_path / "out", "train")]
    assert decoded == [f"text {i} with a lone \ufffd and a pair 😀" for i in range(20)]
    assert stats["skipped_unreadable"]["count"] == 0


@pytest.mark.parametrize("family", ["qwen3", "llama2"])
def test_a_hub_tokenizer_encodes_each_document_as_the_model_reads_it(tmp_path, corpus, documents, family):
    """A model folder's own tokenizer: its own BOS rule (Llama 2 adds one, Qwen none), then its EOS."""
    from hub_tokenizers import hub_tokenizer

    tok = Tokenizer.load(hub_tokenizer(family))
    encode_corpus(corpus, hub_tokenizer(family), tmp_path, EncodeConfig(val_fraction=0.2, workers=1, chunk_bytes=20_000))
    expected = [d for d in documents if not is_validation(d.id, 0.2)]
    got = documents_in(tmp_path, "train")
    assert len(got) == len(expected) > 0
    for doc, ids in zip(expected, got):
        assert ids.tolist() == [*tok.prompt_ids(doc.text), tok.eos_id]
    assert (got[0][0] == tok.bos_id) == (family == "llama2")
