"""The `tokenmill tokenizer train|stats` and `tokenmill encode` verbs, through argparse."""

from __future__ import annotations

import argparse
import json

import pytest

from tokenmill.errors import TokenmillError
from tokenmill.tokenizer import Tokenizer, token_shard_paths
from tokenmill.tokenizer.cli import register


def tokenmill(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="tokenmill")
    register(parser.add_subparsers(required=True))
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def test_train_stats_encode(tmp_path, corpus, capsys):
    folder = corpus[0].parent
    (tmp_path / "mixture.json").write_text(json.dumps({"domains": {"code": {"weight": 2}, "world": {"weight": 1}}}))
    assert tokenmill("tokenizer", "train", "--input", folder, "--kind", "spm", "--spm-model", "bpe", "--vocab-size", 700,
                     "--weights", tmp_path / "mixture.json", "--output", tmp_path / "tok") == 0
    out = capsys.readouterr().out
    tok = Tokenizer.load(tmp_path / "tok")
    assert tok.kind == "spm" and tok.meta["config"]["spm_model"] == "bpe" and tok.vocab_size <= 700
    assert tok.meta["training"]["weights"] == {"code": 2.0, "world": 1.0}
    assert f"hash {tok.hash}" in out and "bytes/token" in out

    assert tokenmill("tokenizer", "stats", "--tokenizer", tmp_path / "tok", "--input", *corpus, "--output", tmp_path / "stats") == 0
    assert json.loads((tmp_path / "stats" / "stats.json").read_text())["hash"] == tok.hash

    assert tokenmill("encode", "--tokenizer", tmp_path / "tok", "--input", folder, "--output", tmp_path / "tokens",
                     "--workers", 1, "--val-fraction", 0.25) == 0
    stats = json.loads((tmp_path / "tokens" / "encode_stats.json").read_text())
    assert stats["val_fraction"] == 0.25 and stats["tokenizer"]["hash"] == tok.hash
    assert token_shard_paths(tmp_path / "tokens", "train") and token_shard_paths(tmp_path / "tokens", "val")
    # the same output folder again: replaced as a whole
    assert tokenmill("encode", "--tokenizer", tmp_path / "tok", "--input", folder, "--output", tmp_path / "tokens",
                     "--workers", 1, "--val-fraction", 0) == 0
    assert not token_shard_paths(tmp_path / "tokens", "val")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["tokenizer", "train", "--input", "{corpus}", "--vocab-size", "100", "--output", "{tmp}/t"], "--vocab-size: .*too small"),
        (["tokenizer", "train", "--input", "{tmp}/missing", "--output", "{tmp}/t"], "--input .*missing does not exist"),
        (["tokenizer", "train", "--input", "{tmp}", "--output", "{tmp}/t"], "holds no document shards"),
        (["tokenizer", "train", "--input", "{corpus}", "--output", "{occupied}"], "was not written by this command"),
        (["encode", "--tokenizer", "{tmp}/none", "--input", "{corpus}", "--output", "{tmp}/o"], "tokenizer folder not found"),
        (["encode", "--tokenizer", "{tmp}/none", "--input", "{corpus}", "--output", "{tmp}/o", "--val-fraction", "2"],
         "--val-fraction: .*less than 1"),
    ],
)
def test_user_errors(tmp_path, corpus, argv, message):
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    values = {"corpus": corpus[0].parent, "tmp": tmp_path, "occupied": tmp_path / "occupied"}
    with pytest.raises(TokenmillError, match=message):
        tokenmill(*[a.format(**values) for a in argv])
    assert (tmp_path / "occupied" / "notes.txt").read_text() == "mine"
