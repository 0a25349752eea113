import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokenmill.cli import build_parser, main
from tokenmill.shards import read_shards, shard_paths


def tokenmill(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tokenmill", *args], capture_output=True, text=True, cwd=cwd)


def verbs() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)


def test_help_lists_every_verb():
    out = tokenmill("--help")
    assert out.returncode == 0
    for verb in verbs():
        assert verb in out.stdout
    assert {"run", "data"} <= set(verbs())


@pytest.mark.parametrize("verb", verbs())
def test_every_verb_has_a_described_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert f"usage: tokenmill {verb}" in text
    # A real description, not just the usage line.
    assert len(text.split("\n\n")[1]) > 80


def test_unknown_key_exits_nonzero_naming_it_without_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data:\n  shards_bytes: 5\n")
    out = tokenmill("run", str(cfg))
    assert out.returncode == 2
    assert "unknown key 'data.shards_bytes'" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_input_is_named(tmp_path):
    out = tokenmill("data", "--input", str(tmp_path / "missing.jsonl"), "--output", str(tmp_path / "o"))
    assert out.returncode == 2
    assert f"input not found: {tmp_path / 'missing.jsonl'}" in out.stderr
    assert "Traceback" not in out.stderr


def test_missing_config_is_named(tmp_path):
    out = tokenmill("run", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "nope.yaml" in out.stderr and "Traceback" not in out.stderr


def test_run_names_a_shipped_config_or_lists_them(tmp_path):
    from tokenmill.config import shipped_config

    out = tokenmill("run", "quickstart", "--print-config", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout == shipped_config("quickstart").read_text(encoding="utf-8")
    out = tokenmill("run", "quikstart", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no shipped config of that name; the shipped configs are: gpt2-small, quickstart" in out.stderr


def test_data_needs_something_to_read(tmp_path):
    assert main(["data", "--output", str(tmp_path / "o")]) == 2


def test_data_reads_inputs_into_shards(tmp_path, jsonl_corpus):
    out_dir = tmp_path / "out"
    assert main(["data", "--input", str(jsonl_corpus), "--domain", "books", "--output", str(out_dir)]) == 0
    docs = list(read_shards(shard_paths(out_dir / "01_data" / "shards")))
    assert [d.text for d in docs] == [f"document number {i} about {i % 7} things" for i in range(50)]
    assert {d.source for d in docs} == {"books"}
    stats = json.loads((out_dir / "01_data" / "stats.json").read_text())
    assert stats["domains"] == {"books": {"documents": 50, "bytes": sum(len(d.text) for d in docs)}}
    assert (out_dir / "01_data" / "domains.svg").read_text().startswith("<svg")
    # Writing again over its own output is allowed; over a foreign folder it is refused.
    assert main(["data", "--input", str(jsonl_corpus), "--output", str(out_dir)]) == 0
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    assert main(["data", "--input", str(jsonl_corpus), "--output", str(foreign)]) == 2
    assert (foreign / "precious.txt").read_text() == "keep me"
