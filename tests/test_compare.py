"""`tokenmill compare`: two run folders' summaries side by side."""

from __future__ import annotations

import json

import pytest

from tokenmill.cli import main
from tokenmill.compare import compare_runs
from tokenmill.errors import TokenmillError


def write_run(folder, align_metrics: dict) -> None:
    folder.mkdir()
    stages = {"06_align": {"status": "done", "wall_time_s": 12.5, "metrics": align_metrics}}
    (folder / "manifest.json").write_text(json.dumps({"stages": stages}))


def test_compare_prints_both_runs_figures_and_their_difference(tmp_path, capsys):
    write_run(tmp_path / "a", {"rm_accuracy": 0.9, "dpo_win_rate": 0.5, "seconds": {"sft": 10.0}})
    write_run(tmp_path / "b", {"rm_accuracy": 0.95, "dpo_win_rate": 0.625, "seconds": {"sft": 12.0}})
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "A done       12.5 s  RM accuracy 0.90" in out and "B done       12.5 s  RM accuracy 0.95" in out
    rows = {line.split()[1]: line.split()[2:] for line in out.splitlines() if line.startswith("06_align ")}
    assert rows["dpo_win_rate"] == ["0.5", "0.625", "+0.125"]
    assert rows["seconds.sft"] == ["10", "12", "+2"]


def test_compare_names_a_folder_that_is_not_a_run(tmp_path):
    write_run(tmp_path / "a", {})
    with pytest.raises(TokenmillError, match="has no manifest.json"):
        compare_runs(tmp_path / "a", tmp_path)
