"""The whole pipeline: every stage in order, each skipped when its settings and inputs are unchanged.

A stage writes into a temporary folder that is renamed into place only when the stage
succeeds, and the manifest marks it done only after that; so a run killed at any moment
leaves nothing half-written that the next run would trust, and the next run resumes at the
first stage that is not done.

Under torchrun (`torchrun --nproc_per_node N -m tokenmill run CONFIG`) every process runs this
loop: the first process decides what runs and keeps the run folder; pre-training and alignment
(SFT, RM and DPO data-parallel; PPO, CAI and the win rates on the first process) run on every
process, into the same stage folder; every other stage runs on the first process while the
others wait at a barrier.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tokenmill.atomic import atomic_dir, write_json, write_text
from tokenmill.config import RunConfig, section_hash, to_yaml
from tokenmill.errors import TokenmillError
from tokenmill.runfolder import RunFolder
from tokenmill.runsummary import format_summary, summary_rows
from tokenmill.sources.collect import collect


@dataclass(frozen=True)
class StageResult:
    metrics: dict[str, Any]
    figures: list[str]


@dataclass(frozen=True)
class Stage:
    name: str  # the folder in the run, e.g. "01_data"
    section: str  # the config section that sets it up
    summary: str
    upstream: tuple[str, ...]  # stages whose outputs it reads
    run: Callable[[RunConfig, Path, RunFolder], StageResult]  # writes into the given folder
    external_inputs: Callable[[RunConfig], str]  # fingerprint of inputs outside the run folder


def _run_data(config: RunConfig, out: Path, run: RunFolder) -> StageResult:
    stats = collect(config.data.sources, out, shard_bytes=config.data.shard_bytes)
    metrics = {k: stats[k] for k in ("documents", "bytes", "domains", "skipped_total", "repaired_total")}
    return StageResult(metrics=metrics, figures=["domains.svg"])


def _data_inputs(config: RunConfig) -> str:
    return ",".join(s.fingerprint() for s in config.data.sources)


def _run_curate(config: RunConfig, out: Path, run: RunFolder) -> StageResult:
    from tokenmill.curate.pipeline import curate
    from tokenmill.shards import shard_paths

    # The work folder lives beside the stage folder, not in its temporary copy, so that a killed
    # run keeps its finished pieces; it clears itself when the config or the inputs change.
    result = curate(
        input_shards=shard_paths(run.stage_dir("01_data") / "shards"),
        config=config.curate,
        out_dir=out,
        work_dir=run.root / "02_curate.work",
        seed=config.seed,
    )
    return StageResult(metrics=result["metrics"], figures=result["figures"])


def _run_tokenizer(config: RunConfig, out: Path, run: RunFolder) -> StageResult:
    from tokenmill.shards import shard_paths
    from tokenmill.tokenizer import train_tokenizer

    # The curated shards already hold the mixture (domains repeated or sampled by their
    # weights), so the tokenizer samples them as they are: weighting again would square it.
    metrics = train_tokenizer(shard_paths(run.stage_dir("02_curate") / "shards"), config.tokenizer, out, seed=config.seed)
    return StageResult(metrics=metrics, figures=["compression.svg", "vocabulary.svg"])


def _run_encode(config: RunConfig, out: Path, run: RunFolder) -> StageResult:
    from tokenmill.shards import shard_paths
    from tokenmill.tokenizer import encode_corpus

    stats = encode_corpus(
        shard_paths(run.stage_dir("02_curate") / "shards"), run.stage_dir("03_tokenizer"), out, config.encode
    )
    return StageResult(metrics=stats, figures=["tokens.svg"])


def _run_model(config: RunConfig, out: Path, run: RunFolder) -> StageResult:
    from tokenmill.model.stage import build_model_stage
    from tokenmill.tokenizer import Tokenizer

    vocab_size = Tokenizer.load(run.stage_dir("03_tokenizer")).vocab_size
    return StageResult(metrics=build_model_stage(config.model, vocab_size, out), figures=["params.svg"])


def _run_pretrain(config: RunConfig, out: Path, run: RunFolder) -> StageResult:
    from tokenmill.pretrain.report import FIGURES
    from tokenmill.pretrain.stage import pretrain_stage

    # Checkpoints live beside the stage folder so that a killed run resumes from the last one;
    # they belong to one set of settings and inputs, and are cleared when those change.
    work = run.root / "05_pretrain.work"
    entry = run.entry("05_pretrain") or {}
    key = json.dumps({"config_hash": entry.get("config_hash"), "inputs": entry.get("inputs")}, sort_keys=True)
    marker = work / "inputs.json"
    if work.exists() and (not marker.exists() or marker.read_text() != key):
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_text(marker, key)  # atomically: a torn marker would clear the checkpoints of a killed run
    metrics = pretrain_stage(
        run.stage_dir("04_model") / "model.json",
        run.stage_dir("03_encode"),
        run.stage_dir("03_tokenizer"),
        config.pretrain,
        out,
        work,
        resume=True,
    )
    return StageResult(metrics=metrics, figures=FIGURES)


def _run_align(config: RunConfig, out: Path, run: RunFolder) -> StageResult:
    from tokenmill.align.stage import align_stage

    # The built-in instruction and preference sets come from the raw documents: curation's
    # mixture repeats some of them, and its PII redaction would blank out parts of answers.
    metrics = align_stage(config.align, run.stage_dir("05_pretrain") / "model", [run.stage_dir("01_data") / "shards"], out)
    return StageResult(metrics=metrics, figures=sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.svg")))


def _align_inputs(config: RunConfig) -> str:
    from tokenmill.sources.base import stat_fingerprint

    cai = config.align.cai
    named = {**{f"align.data.{k}": v for k, v in config.align.data.given().items()},
             "align.cai.constitution": cai.constitution, "align.cai.critique_prompt": cai.critique_prompt,
             "align.cai.revision_prompt": cai.revision_prompt}
    files = {key: Path(path) for key, path in named.items() if path}
    for key, path in files.items():
        if not path.is_file():
            raise TokenmillError(f"{key}: file not found: {path}")
    return stat_fingerprint(list(files.values()))


def _run_quantize(config: RunConfig, out: Path, run: RunFolder) -> StageResult:
    from tokenmill.deploy.quant.stage import quantize_stage

    # The model that is deployed: the aligned one stage 06 names.
    model_dir = run.stage_dir("06_align") / config.align.deploy
    metrics = quantize_stage(model_dir, run.stage_dir("03_encode"), config.quantize, out)
    return StageResult(metrics=metrics, figures=sorted(p.name for p in out.glob("*.svg")))


def _run_eval(config: RunConfig, out: Path, run: RunFolder) -> StageResult:
    from tokenmill.eval.stage import FIGURES, eval_stage

    metrics = eval_stage(run.root, config.eval, config.align.deploy, config.encode.val_fraction, out,
                         log=lambda line: print(line, file=sys.stderr))
    return StageResult(metrics=metrics, figures=FIGURES)


def _no_external_inputs(config: RunConfig) -> str:
    return ""


STAGES: list[Stage] = [
    Stage("01_data", "data", "read raw text from every source, tagged with its domain", (), _run_data, _data_inputs),
    Stage(
        "02_curate",
        "curate",
        "filter, deduplicate, redact and mix the documents",
        ("01_data",),
        _run_curate,
        _no_external_inputs,
    ),
    Stage(
        "03_tokenizer",
        "tokenizer",
        "train the tokenizer on the curated mixture and freeze it",
        ("02_curate",),
        _run_tokenizer,
        _no_external_inputs,
    ),
    Stage(
        "03_encode",
        "encode",
        "encode the curated corpus into token shards",
        ("02_curate", "03_tokenizer"),
        _run_encode,
        _no_external_inputs,
    ),
    Stage("04_model", "model", "fix the architecture: model.json and its parameter breakdown", ("03_tokenizer",), _run_model,
          _no_external_inputs),
    Stage(
        "05_pretrain",
        "pretrain",
        "pre-train the model on the token shards",
        ("03_tokenizer", "03_encode", "04_model"),
        _run_pretrain,
        _no_external_inputs,
    ),
    Stage(
        "06_align",
        "align",
        "align the model: SFT, reward model, DPO, PPO, constitutional AI",
        ("01_data", "05_pretrain"),
        _run_align,
        _align_inputs,
    ),
    Stage(
        "08_quantize",
        "quantize",
        "quantize the aligned weights and measure what it costs",
        ("03_encode", "06_align"),
        _run_quantize,
        _no_external_inputs,
    ),
    Stage(
        "09_eval",
        "eval",
        "evaluate every model of the run on the same tasks (lm-evaluation-harness)",
        ("02_curate", "03_encode", "05_pretrain", "06_align", "08_quantize"),
        _run_eval,
        _no_external_inputs,
    ),
]


# The stages every torchrun process runs; the others run on the first process alone.
EVERY_PROCESS = {"05_pretrain", "06_align"}


# The stages `tokenmill data` runs.
DATA_STAGES = ("01_data", "02_curate")


def find_stage(name: str) -> int:
    """Index of a stage named by its folder ("01_data"), number ("01", "1") or section ("data")."""
    for i, s in enumerate(STAGES):
        number = s.name.split("_", 1)[0]
        if name in (s.name, s.section, number, number.lstrip("0")):
            return i
    names = ", ".join(f"{s.name} ({s.section})" for s in STAGES)
    raise TokenmillError(f"unknown stage '{name}'; the stages are: {names}")


def run_pipeline(
    config: RunConfig, from_stage: str | None = None, to_stage: str | None = None, log: TextIO | None = None
) -> RunFolder:
    """Run the stages of `config` from `from_stage` (re-run even if fresh) through `to_stage`."""
    log = log or sys.stderr
    first = find_stage(from_stage) if from_stage else 0
    last = find_stage(to_stage) if to_stage else len(STAGES) - 1
    if first > last:
        raise TokenmillError(f"--from {from_stage} comes after --to {to_stage}")
    run = RunFolder(config.resolved_run_dir())
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from tokenmill.pretrain.distributed import init_data_parallel

        d = init_data_parallel(config.pretrain.device)
        if not d.is_main:
            try:
                return _follow(config, run, d)
            finally:
                d.close()
        try:
            return _pipeline(config, run, first, last, from_stage, log, d)
        finally:
            d.broadcast(None)  # the first process's last word: the followers stop
            d.close()
    return _pipeline(config, run, first, last, from_stage, log)


def _pipeline(config: RunConfig, run: RunFolder, first: int, last: int, from_stage: str | None, log: TextIO, d=None) -> RunFolder:
    for stale in run.prepare():
        print(f"removed unfinished {stale.name} left by an interrupted run", file=log)
    write_text(run.root / "config.yaml", to_yaml(config))
    print(f"run folder: {run.root}", file=log)

    ran: set[str] = set()
    for i, stage in enumerate(STAGES[: last + 1]):
        inputs = {"external": stage.external_inputs(config)}
        for up in stage.upstream:
            fingerprint = run.output_fingerprint(up)
            if fingerprint is None:
                raise TokenmillError(f"stage {stage.name} needs {up}, which is not done; run without --from")
            inputs[up] = fingerprint
        config_hash = section_hash(config, stage.section)
        fresh = run.is_fresh(stage.name, config_hash, inputs)
        if i < first and not fresh:
            raise TokenmillError(f"stage {stage.name} is not done or out of date; run it before --from {from_stage}")
        if i < first or (fresh and from_stage is None):
            print(f"[{stage.name}] up to date, skipped", file=log)
            continue
        print(f"[{stage.name}] {stage.summary}", file=log)
        run.mark_running(stage.name, config_hash, inputs)
        start = time.perf_counter()
        try:
            with atomic_dir(run.stage_dir(stage.name)) as tmp:
                if d is not None and stage.name in EVERY_PROCESS:
                    d.broadcast((stage.name, str(tmp)))  # the followers join in, writing into the same folder
                result = stage.run(config, tmp, run)
                if d is not None and stage.name in EVERY_PROCESS:
                    d.barrier()
        except BaseException as e:
            run.mark_failed(stage.name, f"{type(e).__name__}: {e}", time.perf_counter() - start)
            raise
        wall = time.perf_counter() - start
        run.mark_done(stage.name, result.metrics, result.figures, wall)
        ran.add(stage.name)
        print(f"[{stage.name}] done in {wall:.1f} s", file=log)
    rows = summary_rows(run, [s.name for s in STAGES[: last + 1]], ran)
    write_json(run.root / "summary.json", rows)
    print(format_summary(rows), file=log)
    return run


def _follow(config: RunConfig, run: RunFolder, d) -> RunFolder:
    """A torchrun process other than the first: run each stage of EVERY_PROCESS in the folder the
    first process names, until it says the pipeline is over (None)."""
    stages = {s.name: s for s in STAGES}
    while (task := d.broadcast(None)) is not None:
        name, folder = task
        stages[name].run(config, Path(folder), run)
        d.barrier()
    return run
