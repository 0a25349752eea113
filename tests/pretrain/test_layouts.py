"""Every parallel layout, under torchrun with the gloo backend, matches a single process; and a
checkpoint written by two processes resumes in one (torch.distributed.checkpoint resharding)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pretrain_runs import launch, read_jsonl, step_losses, train_here, val_losses, write_spec
from safetensors.torch import load_file

from tokenmill.pretrain.checkpoint import MARKER, read_marker

LAYOUTS = {
    "ddp": (2, dict(dp=2)),
    "fsdp": (2, dict(fsdp=2)),
    "tp": (2, dict(tp=2)),
    "pp-1f1b": (2, dict(pp=2, pp_schedule="1f1b")),
    "pp-gpipe": (2, dict(pp=2, pp_schedule="gpipe")),
    "fsdp-x-tp": (4, dict(fsdp=2, tp=2)),
}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, model_config, corpus) -> Path:
    """The single-process run, in this process."""
    work = tmp_path_factory.mktemp("single")
    train_here(model_config, corpus, work)
    return work


@pytest.fixture(scope="module")
def runs(tmp_path_factory, model_config, corpus):
    """Each layout's work folder. The layouts of one process count run in one launch (one
    process group, a mesh per run), when the first of them is asked for."""
    done: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in done:
            nproc = LAYOUTS[name][0]
            batch = [n for n, (k, _) in LAYOUTS.items() if k == nproc]
            folders = {n: tmp_path_factory.mktemp(n) for n in batch}
            launch([write_spec(folders[n], model_config, corpus, **LAYOUTS[n][1]) for n in batch], nproc)
            done.update({n: folders[n] / "work" for n in batch})
        return done[name]

    return run


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_a_single_process(name, runs, reference):
    got, expected = step_losses(runs(name)), step_losses(reference)
    assert sorted(got) == sorted(expected) == list(range(1, 11))
    assert max(abs(got[s] - expected[s]) for s in expected) <= 1e-5, (got, expected)
    got_val, expected_val = val_losses(runs(name)), val_losses(reference)
    assert sorted(got_val) == [0, 5, 10]
    assert max(abs(got_val[s] - expected_val[s]) for s in expected_val) <= 1e-5
    # Training moved: the losses are not all the same number.
    assert expected[10] < expected[1] - 0.3
    # The samples (greedy, KV-cached: under tensor parallelism each rank caches its own heads) are
    # the single process's; a pipeline takes none.
    if not name.startswith("pp"):
        texts = [[r["text"] for r in read_jsonl(w / "samples.jsonl")] for w in (runs(name), reference)]
        assert texts[0] == texts[1] and len(texts[1]) == 3
    # The model folder, exported from the layout's last checkpoint, holds the same weights.
    ours, single = (load_file(w / "out" / "model" / "model.safetensors") for w in (runs(name), reference))
    assert ours.keys() == single.keys()
    assert max((ours[k] - single[k]).abs().max().item() for k in single) <= 1e-4


@pytest.mark.parametrize("name", ["fsdp", "tp"])
def test_two_process_checkpoint_resumes_in_one(name, runs, reference, tmp_path, model_config, corpus):
    """Step 6 of a 2-process run (sharded FSDP tensors; TP's Q/K/V rows reordered per rank),
    resumed by a single process without a process group, continues as the single run does."""
    saved = runs(name) / "checkpoints" / "step-00000006"
    assert {p.name for p in saved.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}  # both ranks wrote
    # Rank 0 hashed every rank's files, once all were written; the resume below checks them.
    assert set(read_marker(saved)["sha256"]) == {p.name for p in saved.iterdir() if p.name != MARKER}
    work = tmp_path / "work"
    shutil.copytree(saved, work / "checkpoints" / saved.name)
    shutil.copyfile(runs(name) / "metrics.jsonl", work / "metrics.jsonl")
    train_here(model_config, corpus, work, resume=True)
    got, expected = step_losses(work), step_losses(reference)
    assert sorted(got) == list(range(1, 11))
    assert max(abs(got[s] - expected[s]) for s in range(7, 11)) <= 1e-5
