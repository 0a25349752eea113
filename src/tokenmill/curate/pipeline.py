"""Stage 02: run the curation blocks over document shards, resumably, then write the mixture.

The input is first cut into pieces of about `executor.task_bytes`; a piece is one task, and
the pieces keep corpus order (input shard, then position), so every "first copy" choice is
the same whatever the number of workers. Then the blocks run in passes:

- consecutive document blocks are fused into one pass: each task reads its piece once,
  sends every document through the blocks in order and writes what is kept;
- a corpus block is a barrier: its `fit` sees the shards as they stand after every block
  before it, and its `apply` opens the next pass (each worker loads its state once).

Everything lives in a work folder that outlives a killed run. Each step has its own folder
holding a fingerprint of everything that decides its output (the inputs, the blocks up to it,
the seed); a step whose fingerprint changed is cleared. A finished task leaves a marker file
with its statistics, a finished fit a marker of its own, and a resumed run redoes only what has
no marker. Since tasks are deterministic and write atomically, a resumed run keeps exactly the
documents of an uninterrupted one.

The result in `out_dir`: `shards/` (the mixture), `stats.json` (per block: documents and
bytes in and out, removals by reason with samples, removed share by domain, errors),
`removed_samples.jsonl`, `removed.jsonl` (every removed document and why), `curation.svg`, `mixture.json`, `mixture.svg`, and the charts the
corpus blocks drew in their fit (see report.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import xxhash

from tokenmill import __version__
from tokenmill.atomic import remove_stale_tmp, write_json, write_text
from tokenmill.compression import open_binary
from tokenmill.curate.block import Block, BlockStats, CorpusBlock, DocumentBlock, FitContext
from tokenmill.curate.executor import ExecutorConfig, make_executor
from tokenmill.curate.mixture import Mixture, ShardMix, census_shard, mix_shard, mixture_report, plan_mixture, write_mixture_report
from tokenmill.curate.report import (
    REMOVED_FILE,
    domain_table,
    input_report,
    kept_chart,
    merge_block_stats,
    print_table,
    publish_fit_figures,
    redact_samples,
    sum_domains,
    total_counts,
    write_removals,
    write_samples,
)
from tokenmill.errors import TokenmillError
from tokenmill.figures import human_bytes
from tokenmill.shards import SHARD_SUFFIX, ShardWriter, read_shards
from tokenmill.sources.document import Document, SkipLog

if TYPE_CHECKING:
    from tokenmill.curate.config import CurateConfig

FINGERPRINT = "FINGERPRINT"
ONE_FILE = 1 << 62  # a pass writes each piece into a single shard
STEP_NAME = re.compile(r"^\d\d-(split|pass|fit-[\w.-]+|mixture)$")  # the only entries the work folder cleans up


def curate(input_shards: list[Path], config: CurateConfig, out_dir: Path, work_dir: Path, seed: int) -> dict[str, Any]:
    """Curate `input_shards` with the blocks of a `CurateConfig`; see `run_blocks`."""
    return run_blocks(input_shards, config.blocks(), config.mixture, config.executor, out_dir, work_dir, seed)


def run_blocks(
    input_shards: list[Path],
    blocks: list[Block],
    mixture: Mixture,
    executor: ExecutorConfig,
    out_dir: Path,
    work_dir: Path,
    seed: int,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the enabled `blocks` in order over `input_shards`, then the mixture, into `out_dir`.

    `work_dir` holds the intermediate shards and completion markers; pass the same folder
    again to resume a killed run. Returns the manifest metrics and the figure file names.
    """
    start = time.perf_counter()
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    input_shards = [Path(p) for p in input_shards]
    for p in input_shards:
        if not p.is_file():
            raise TokenmillError(f"input shard not found: {p}")
    disabled = [b.name for b in blocks if not b.enabled]
    blocks = [b for b in blocks if b.enabled]
    names = [b.name for b in blocks]
    if len(set(names)) != len(names):
        raise TokenmillError(f"each block may appear once; got {names}")
    work = WorkFolder(work_dir)
    log = sys.stderr

    with make_executor(executor, progress) as ex:
        # Step 0: cut the input into pieces, the tasks of every later step.
        fp = _fingerprint(
            {"version": __version__, "seed": seed, "task_bytes": executor.task_bytes,
             "inputs": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in input_shards]}
        )
        step = work.step("00-split", fp)
        print(f"[curate] cutting {len(input_shards)} input shard(s) into pieces of {human_bytes(executor.task_bytes)}", file=log)
        items = [(step / f"{i:05d}.done.json", (p, step, f"{i:05d}", executor.task_bytes)) for i, p in enumerate(input_shards)]
        split = _run_tasks(ex, split_shard, items, "split")
        shards = [(n[: -len(SHARD_SUFFIX)], step / n) for r in split for n in r["outputs"]]  # (piece, path)
        domains_out = sum_domains(r["domains"] for r in split)
        report: dict[str, Any] = {"input": input_report(split, domains_out), "blocks": [], "disabled_blocks": disabled, "passes": []}

        removals: list[list[str]] = []  # every removed document: [id, block, reason, detail]
        fits: dict[str, tuple[Path, float]] = {}  # corpus block -> (its fitted state, fit seconds)
        for i, (kind, group) in enumerate(_plan(blocks), start=1):
            fp = _fingerprint({"previous": fp, "kind": kind, "blocks": [_spec(b).describe() for b in group]})
            if kind == "fit":
                step = work.step(f"{i:02d}-fit-{group[0].name}", fp)
                fits[group[0].name] = (step / "state", _fit(group[0], [p for _, p in shards], step, ex, seed))
                continue
            step = work.step(f"{i:02d}-pass", fp)
            print(f"[curate] {step.name}: {', '.join(b.name for b in group)} over {len(shards)} shard(s)", file=log)
            specs = [_spec(b, fits[b.name][0] if isinstance(b, CorpusBlock) else None) for b in group]
            items = [(step / f"{piece}.done.json", PassTask(path, step, piece, specs, fp)) for piece, path in shards]
            resumed = sum(marker.exists() for marker, _ in items)
            t = time.perf_counter()
            results = _run_tasks(ex, run_pass, items, step.name)
            report["passes"].append(
                {"blocks": [b.name for b in group], "tasks": len(items), "tasks_resumed": resumed,
                 "seconds": round(time.perf_counter() - t, 3)}
            )
            report["blocks"].extend(merge_block_stats(group, results, fits))
            removals.extend(row for r in results for row in r.get("removals", []))
            shards = [(piece, step / n) for (piece, _), r in zip(shards, results) for n in r["outputs"]]
            domains_out = sum_domains(r["domains"] for r in results)

        # The mixture: a census of the final shards, the plan, then every shard with its copies.
        step = work.step("99-mixture", _fingerprint({"previous": fp, "mixture": mixture.model_dump(mode="json")}))
        print(f"[curate] mixture over {len(shards)} shard(s)", file=log)
        census = _run_tasks(ex, census_shard, [(step / f"{p}.census.json", (path, mixture)) for p, path in shards], "census")
        plan = plan_mixture(mixture, census, seed)
        items = [
            (step / f"{piece}.done.json", ShardMix(path, step, piece, mixture, plan.rates, plan.offsets, plan.starts[k], seed))
            for k, (piece, path) in enumerate(shards)
        ]
        mixed = _run_tasks(ex, mix_shard, items, "mixture")
        work.remove_unused()
        workers = ex.workers
    _WORKER_BLOCKS.clear()

    out_dir.mkdir(parents=True, exist_ok=True)
    final = [step / n for r in mixed for n in r["outputs"]]
    _link_shards(final, out_dir / "shards")
    mix = mixture_report(mixture, plan, census, mixed, seed)
    write_mixture_report(out_dir, mix)
    report["domains"] = domain_table(report["input"]["domains"], domains_out)
    report["totals"] = total_counts(report)
    report["mixture"] = {k: mix[k] for k in ("docs_after", "bytes_after", "tokens_after_estimate")}
    report["output_shards"] = len(final)
    report["executor"] = {"kind": executor.kind, "workers": workers, "task_bytes": executor.task_bytes}
    report["seconds"] = round(time.perf_counter() - start, 3)
    redact_samples(report["blocks"], blocks)
    write_json(out_dir / "stats.json", report)
    write_samples(out_dir / "removed_samples.jsonl", report["blocks"])
    write_removals(out_dir / REMOVED_FILE, removals)
    write_text(out_dir / "curation.svg", kept_chart(report))
    figures = ["curation.svg", "mixture.svg", *publish_fit_figures(fits, out_dir)]
    print_table(report, log)
    t = report["totals"]
    metrics = {
        "documents_in": t["docs_in"], "bytes_in": t["bytes_in"],
        "documents_kept": t["docs_out"], "bytes_kept": t["bytes_out"],
        "documents_mixed": mix["docs_after"], "bytes_mixed": mix["bytes_after"],
        "removed_by_block": {b["name"]: b["docs_in"] - b["docs_out"] for b in report["blocks"]},
        "errors": t["errors"], "shards": len(final), "seconds": report["seconds"],
    }
    return {"metrics": metrics, "figures": figures}


def _fit(block: CorpusBlock, shards: list[Path], step: Path, ex: Any, seed: int) -> float:
    """Fit `block` on the shards unless its marker says it was; return the fit's seconds."""
    marker = step / "fit.done.json"
    if not marker.exists():
        print(f"[curate] {step.name}: fit on {len(shards)} shard(s)", file=sys.stderr)
        start = time.perf_counter()
        _spec(block).build().fit(FitContext(shards=shards, workdir=step / "state", executor=ex, seed=seed))
        write_json(marker, {"seconds": round(time.perf_counter() - start, 3)})
    return json.loads(marker.read_text())["seconds"]


class WorkFolder:
    """The steps' folders, each emptied when what it was made from (its fingerprint) has changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.used: list[str] = []

    def step(self, name: str, fingerprint: str) -> Path:
        step = self.root / name
        mark = step / FINGERPRINT
        if step.exists() and (not mark.is_file() or mark.read_text().strip() != fingerprint):
            shutil.rmtree(step)
        step.mkdir(exist_ok=True)
        remove_stale_tmp(step)  # files a killed task was writing
        if not mark.exists():
            write_text(mark, fingerprint + "\n")
        self.used.append(name)
        return step

    def remove_unused(self) -> None:
        """Clear steps of an earlier plan (a block since disabled); leave anything else alone."""
        for p in self.root.iterdir():
            if STEP_NAME.match(p.name) and p.name not in self.used:
                shutil.rmtree(p, ignore_errors=True)


# --- the plan --------------------------------------------------------------------------------


def _plan(blocks: list[Block]) -> list[tuple[str, list[Block]]]:
    """("pass", [blocks]) and ("fit", [corpus block]) steps: fused passes between barriers."""
    steps: list[tuple[str, list[Block]]] = []
    current: list[Block] = []
    for block in blocks:
        if isinstance(block, CorpusBlock):
            if current:
                steps.append(("pass", current))
            steps.append(("fit", [block]))
            current = [block]
        elif isinstance(block, DocumentBlock):
            current.append(block)
        else:
            raise TokenmillError(f"{type(block).__name__} is neither a DocumentBlock nor a CorpusBlock")
    if current:
        steps.append(("pass", current))
    return steps


@dataclass(frozen=True)
class BlockSpec:
    """A block as its class and settings: cheap to send to a worker, rebuilt there without runtime state."""

    cls: type[Block]
    config: dict[str, Any]
    workdir: Path | None = None  # a corpus block's fitted state

    def describe(self) -> dict[str, Any]:
        return {"class": f"{self.cls.__module__}.{self.cls.__qualname__}", "config": self.config}

    def build(self) -> Block:
        return self.cls.model_validate(self.config)


def _spec(block: Block, workdir: Path | None = None) -> BlockSpec:
    return BlockSpec(type(block), block.model_dump(mode="json"), workdir)


def _fingerprint(payload: dict[str, Any]) -> str:
    return xxhash.xxh3_128_hexdigest(json.dumps(payload, sort_keys=True, default=str).encode())


def _run_tasks(ex: Any, fn: Callable[[Any], dict], items: list[tuple[Path, Any]], desc: str) -> list[dict]:
    """`fn` over the items whose marker is missing; every item's result, from its marker or its run."""
    results: list[dict | None] = [json.loads(m.read_text()) if m.exists() else None for m, _ in items]
    todo = [i for i, r in enumerate(results) if r is None]
    if len(todo) < len(items):
        print(f"[curate] {desc}: {len(items) - len(todo)} of {len(items)} already done", file=sys.stderr)
    for i, r in zip(todo, ex.map(_marked, [(fn, *items[i]) for i in todo], desc=desc)):
        results[i] = r
    return results  # type: ignore[return-value]


def _marked(item: tuple[Callable[[Any], dict], Path, Any]) -> dict:
    """Run one task and leave its result as its completion marker (written last, atomically)."""
    fn, marker, arg = item
    result = fn(arg)
    write_json(marker, result)
    return result


# --- the tasks (run in workers) -------------------------------------------------------------


def split_shard(item: tuple[Path, Path, str, int]) -> dict[str, Any]:
    """Cut one input shard into pieces of about `task_bytes`; skip lines that are not documents."""
    path, folder, prefix, task_bytes = item
    skips = SkipLog()
    domains: dict[str, list[int]] = {}
    writer = ShardWriter(folder, prefix=prefix, shard_bytes=task_bytes)
    with writer, open_binary(path) as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
                doc = Document.from_dict(d)
                if not all(isinstance(v, str) for v in (doc.id, doc.text, doc.source)) or not isinstance(doc.meta, dict):
                    raise ValueError("id, text and source must be strings and meta an object")
                writer.write(doc)  # fails, before writing anything, on text that is not valid Unicode
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                skips.skip("invalid_document", f"{path.name}:{n}", f"{type(e).__name__}: {e}")
                continue
            cell = domains.setdefault(doc.source, [0, 0])
            cell[0] += 1
            cell[1] += len(doc.text.encode("utf-8", errors="replace"))
    return {"outputs": [p.name for p in writer.paths], "domains": domains, **skips.summary()}


@dataclass
class PassTask:
    path: Path
    out_folder: Path
    piece: str
    blocks: list[BlockSpec]
    token: str


# Blocks built (and corpus blocks loaded) in this worker, for the pass now running.
_WORKER_BLOCKS: dict[tuple[str, str], Block] = {}


def _worker_block(spec: BlockSpec, token: str) -> Block:
    key = (token, json.dumps(spec.describe(), sort_keys=True))
    if key not in _WORKER_BLOCKS:
        if any(k[0] != token for k in _WORKER_BLOCKS):
            _WORKER_BLOCKS.clear()  # a new pass: free the state of the last one
        block = spec.build()
        if spec.workdir is not None:
            block.load(spec.workdir)
        _WORKER_BLOCKS[key] = block
    return _WORKER_BLOCKS[key]


def run_pass(task: PassTask) -> dict[str, Any]:
    """One piece through the pass's blocks in order; write the kept documents and return the stats."""
    blocks = [_worker_block(spec, task.token) for spec in task.blocks]
    stats = [BlockStats(b.name) for b in blocks]
    seconds = [0.0] * len(blocks)
    domains: dict[str, list[int]] = {}
    removals: list[list[str]] = []  # [id, block, reason, detail] of every document removed
    writer = ShardWriter(task.out_folder, prefix=task.piece, shard_bytes=ONE_FILE)
    with writer:
        for doc in read_shards([task.path]):
            doc_id = doc.id
            for i, (block, st) in enumerate(zip(blocks, stats)):
                st.seen(doc)
                if not block.applies_to(doc):
                    st.count("outside_domains")
                else:
                    t = time.perf_counter()
                    doc = apply_block(block, doc, st)
                    seconds[i] += time.perf_counter() - t
                    if doc is None:
                        removals.append([doc_id, block.name, *st.last_removal])
                        break
                st.kept(doc)
            else:
                writer.write(doc)
                cell = domains.setdefault(doc.source, [0, 0])
                cell[0] += 1
                cell[1] += len(doc.text.encode("utf-8", errors="replace"))
    return {
        "outputs": [p.name for p in writer.paths],
        "domains": domains,
        "removals": removals,
        "blocks": [
            {"stats": st.to_dict(), "in_by_domain": dict(st.in_by_domain), "removed_by_domain": dict(st.removed_by_domain), "seconds": s}
            for st, s in zip(stats, seconds)
        ],
    }


def apply_block(block: Block, doc: Document, stats: BlockStats) -> Document | None:
    """`block.apply`, with its failure on one document recorded instead of ending the run.

    A failing block keeps the document as it was before the call (or drops it, for blocks such
    as PII redaction whose safe choice is to drop); a removal is always recorded with a reason.
    """
    before = Document(doc.id, doc.text, doc.source, dict(doc.meta))
    removed = stats.removed.total()
    try:
        out = block.apply(doc, stats)
        if out is not None and not isinstance(out, Document):
            raise TypeError(f"apply returned {type(out).__name__}, not a Document or None")
    except Exception as exc:
        stats.error(before, exc)
        if block.drop_on_error:
            stats.remove(before, f"{block.name}.error", f"{type(exc).__name__}: {exc}")
            return None
        return before
    if out is None and stats.removed.total() == removed:
        stats.remove(before, f"{block.name}.unrecorded")
    return out


def _link_shards(paths: list[Path], folder: Path) -> None:
    """The final shards under their published names; hard links when the file system allows."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(f"*{SHARD_SUFFIX}"):
        old.unlink()
    for k, src in enumerate(paths):
        dst = folder / f"shard-{k:05d}{SHARD_SUFFIX}"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
