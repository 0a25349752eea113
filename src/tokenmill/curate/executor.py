"""Executors: run one function over many small items in parallel, results in item order.

Curation is a map over shards, so an executor needs only `map`. `LocalExecutor` uses a pool
of worker processes on this machine (in-process when `workers` is 1, which keeps tracebacks
and debuggers simple); `RayExecutor` runs each item as a Ray task, on this machine or on a
cluster. The blocks and the shards they write are the same either way, so both give the same
output.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from tqdm import tqdm

from tokenmill.errors import TokenmillError

T = TypeVar("T")
R = TypeVar("R")

RAY_TEMP_DIR_MAX = 45  # + "/session_<date>_<time>_<pid>/sockets/plasma_store" stays under 108 bytes

# Libraries that start a thread pool per process (OpenMP, BLAS, torch) would otherwise start
# one thread per core in every worker: N workers x N threads fight over N cores. (Ray sets
# these itself from each task's CPU count.)
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class ExecutorConfig(BaseModel):
    """Where the curation tasks run: local worker processes (default) or Ray."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["local", "ray"] = "local"
    workers: int | None = Field(None, ge=1, description="Parallel tasks; default: the CPUs of this machine (or the Ray cluster).")
    task_bytes: int = Field(
        4_000_000, gt=0,
        description="Text (uncompressed bytes) per task; the input is cut into pieces of this size, which are also the output shards.",
    )
    ray_address: str | None = Field(
        None, description="Address of a running Ray cluster ('auto', 'ray://host:10001'); None starts Ray on this machine."
    )
    ray_temp_dir: str | None = Field(None, description="Ray's session folder when Ray is started here (default /tmp/ray).")
    ray_object_store_bytes: int | None = Field(None, ge=78_643_200, description="Ray object store size when started here (default: Ray's).")


class LocalExecutor:
    """A pool of worker processes on this machine; `workers=1` runs every item in this process."""

    def __init__(self, workers: int | None = None, progress: bool = True) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], items: Sequence[T], desc: str = "tasks") -> list[R]:
        items = list(items)
        bar = _bar(desc, len(items), self.progress)
        if self.workers == 1 or not items:
            results = []
            for item in items:
                results.append(fn(item))
                bar.update(1)
            bar.close()
            return results
        pool = self._get_pool()
        futures: dict[Future, int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        pending = set(futures)
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    results[futures[f]] = f.result()
                    bar.update(1)
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        finally:
            bar.close()
        return results

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # Never 'fork': the parent may hold threads (torch, BLAS, tqdm's monitor) whose locks a
            # forked child would inherit mid-use. 'forkserver' forks workers from a fresh,
            # single-threaded server process, which is as safe as 'spawn' and starts faster.
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context(method), initializer=_limit_threads
            )
        return self._pool

    def close(self, wait: bool = True) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        # On an error (or Ctrl-C) do not wait for running tasks: each writes its result
        # atomically, so whatever they leave is either complete or ignored by a resumed run.
        self.close(wait=exc_type is None)


class RayExecutor:
    """Each item is a Ray task. Starts Ray on this machine unless `address` names a cluster.

    On a cluster, every node needs tokenmill installed (the same version) and must see the
    work folder's path: tasks read and write shards there, only small results travel back.
    """

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        temp_dir: str | None = None,
        object_store_bytes: int | None = None,
        progress: bool = True,
    ) -> None:
        try:
            import ray
        except ImportError:
            raise TokenmillError("executor kind 'ray' needs Ray: pip install 'tokenmill[ray]'") from None
        self._ray = ray
        self.progress = progress
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address)  # the cluster's own settings: passing ours would be an error
            else:
                if temp_dir and len(str(Path(temp_dir).absolute())) > RAY_TEMP_DIR_MAX:
                    # Ray puts Unix sockets under it, whose paths may not exceed 107 bytes.
                    raise TokenmillError(
                        f"ray_temp_dir {temp_dir} is too long for Ray's sockets: use a path of at most {RAY_TEMP_DIR_MAX} characters"
                    )
                ray.init(
                    num_cpus=workers or os.cpu_count() or 1,
                    include_dashboard=False,
                    object_store_memory=object_store_bytes,
                    _temp_dir=str(Path(temp_dir).absolute()) if temp_dir else None,
                )
            self._started = True
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def map(self, fn: Callable[[T], R], items: Sequence[T], desc: str = "tasks") -> list[R]:
        ray = self._ray
        items = list(items)
        bar = _bar(desc, len(items), self.progress)
        task = ray.remote(num_cpus=1, max_retries=2)(fn)
        refs = [task.remote(item) for item in items]
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                bar.update(len(done))
            return ray.get(refs)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            bar.close()

    def close(self) -> None:
        if self._started:
            self._ray.shutdown()
            self._started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_executor(config: ExecutorConfig, progress: bool = True) -> LocalExecutor | RayExecutor:
    """The executor a config asks for; use it as a context manager so that it is shut down."""
    if config.kind == "ray":
        return RayExecutor(config.ray_address, config.workers, config.ray_temp_dir, config.ray_object_store_bytes, progress)
    return LocalExecutor(config.workers, progress)


def _limit_threads() -> None:
    for key, value in _ONE_THREAD.items():
        os.environ.setdefault(key, value)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _bar(desc: str, total: int, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit=" task", file=sys.stderr, dynamic_ncols=True, disable=not enabled, mininterval=0.5)
