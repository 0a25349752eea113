"""Executors: results in order, errors surface, and the same dedup result locally and on Ray."""

from __future__ import annotations

import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray
from pydantic import ValidationError

from tokenmill.curate.dedup.exact import ExactDedup
from tokenmill.curate.dedup.minhash import FuzzyDedup
from tokenmill.curate.executor import ExecutorConfig, LocalExecutor, RayExecutor, make_executor
from tokenmill.curate.mixture import Mixture
from tokenmill.curate.pipeline import run_blocks
from tokenmill.errors import TokenmillError
from tokenmill.shards import ShardWriter, read_shards, shard_paths
from tokenmill.sources.document import Document

# Ray workers cannot import this test module by name: send its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def slow_identity(x: int) -> int:
    time.sleep(0.03 * ((7 - x) % 4))  # later items often finish first
    return x


def pid(_: int) -> int:
    return os.getpid()


def fail_on_three(x: int) -> int:
    if x == 3:
        raise ValueError("bad item 3")
    return x


def test_one_worker_runs_in_this_process():
    ex = LocalExecutor(workers=1, progress=False)
    assert ex.map(pid, range(3)) == [os.getpid()] * 3
    assert ex._pool is None


def test_worker_processes_keep_item_order_and_raise_the_task_error():
    with LocalExecutor(workers=2, progress=False) as ex:
        assert ex.map(slow_identity, range(8)) == list(range(8))
        pids = set(ex.map(pid, range(6)))
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
        with pytest.raises(ValueError, match="bad item 3"):
            ex.map(fail_on_three, range(6))
        assert ex.map(slow_identity, [5, 1]) == [5, 1]  # the pool survives a failed task
    assert ex._pool is None


def test_config():
    c = ExecutorConfig()
    assert (c.kind, c.workers, c.ray_address) == ("local", None, None)
    assert LocalExecutor(c.workers).workers == os.cpu_count()
    assert isinstance(make_executor(ExecutorConfig(workers=1)), LocalExecutor)
    with pytest.raises(ValidationError):
        ExecutorConfig(kind="spark")
    with pytest.raises(ValidationError):
        ExecutorConfig(worker=2)
    with pytest.raises(ValidationError):
        ExecutorConfig(workers=0)
    with pytest.raises(TokenmillError, match="too long for Ray"):
        RayExecutor(temp_dir="/tmp/" + "x" * 60)


def near_duplicate_corpus(n: int = 120, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    docs = []
    for i in range(n):
        words = rng.choices(vocab, k=120)
        docs.append(Document(f"doc{i:04d}", " ".join(words), ("web", "reference")[i % 2]))
    # Planted copies: exact (re-cased, re-spaced), and near (1 of 120 words changed: 5-gram Jaccard 0.92).
    for j in range(0, n, 10):
        docs.append(Document(f"exact{j:04d}", "  " + docs[j].text.upper().replace(" ", "\n "), "web"))
        words = docs[j + 1].text.split()
        words[60] = "changed"
        docs.append(Document(f"near{j:04d}", " ".join(words), "web"))
    rng.shuffle(docs)
    return docs


@pytest.fixture
def ray_dir():
    # Ray's socket paths must stay under 108 bytes; pytest's tmp_path is too deep for them.
    path = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    yield str(path)
    shutil.rmtree(path, ignore_errors=True)


def test_ray_keeps_order_raises_task_errors_and_dedups_like_the_local_executor(tmp_path, ray_dir):
    docs = near_duplicate_corpus()
    with ShardWriter(tmp_path / "in", shard_bytes=40_000) as w:
        for d in docs:
            w.write(d)
    assert len(w.paths) > 2
    blocks = [ExactDedup(partitions=4), FuzzyDedup(partitions=4)]

    def dedup(kind: str) -> list[str]:
        config = ExecutorConfig(kind=kind, workers=2, task_bytes=25_000)
        run_blocks(w.paths, blocks, Mixture(enabled=False), config, tmp_path / kind, tmp_path / f"work-{kind}", seed=0, progress=False)
        return [d.id for d in read_shards(shard_paths(tmp_path / kind / "shards"))]

    local = dedup("local")
    with RayExecutor(workers=2, temp_dir=ray_dir, object_store_bytes=100_000_000, progress=False) as ex:
        assert ray.is_initialized() and ex.workers == 2
        assert ex.map(slow_identity, range(6)) == list(range(6))
        with pytest.raises(ValueError, match="bad item 3"):
            ex.map(fail_on_three, range(5))
        on_ray = dedup("ray")  # finds Ray running: uses it and leaves it running
        assert ray.is_initialized()
    assert not ray.is_initialized()  # the executor shut down the Ray it started

    assert local == on_ray
    removed = {d.id for d in docs} - set(local)
    planted = {d.id for d in docs if not d.id.startswith("doc")}
    # The first copy in corpus order survives, so a planted copy may be kept instead of its
    # original: exactly one document of each planted pair is gone.
    assert len(removed) == len(planted) == 24
    for d in docs:
        if d.id.startswith(("exact", "near")):
            j = int(d.id[-4:])
            original = f"doc{j:04d}" if d.id.startswith("exact") else f"doc{j + 1:04d}"
            assert (d.id in removed) != (original in removed)
