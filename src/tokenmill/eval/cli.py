"""`tokenmill eval`: a run folder's evaluation stage, or model folders on lm-eval tasks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenmill.errors import TokenmillError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate every model of a run folder, or model folders, through lm-evaluation-harness",
        description=(
            "With a run folder: run its evaluation stage (09_eval) again: every model of the run on the "
            "built-in tasks written from its held-out data and on the standard tasks --tasks names, a "
            "table in 09_eval/summary.json and the run's summary.json. With model folders: each on the "
            "lm-eval tasks --tasks names (tasks of your own through --include-path), and the table printed."
        ),
    )
    p.add_argument("targets", nargs="+", metavar="PATH", help="a run folder, or one or more model folders")
    p.add_argument("--tasks", default="", metavar="T1,T2",
                   help="lm-eval tasks (hellaswag, arc_easy, piqa, lambada_openai, ...), run where their data are at hand")
    p.add_argument("--include-path", metavar="DIR", help="a folder of task YAML files (model folders only)")
    p.add_argument("--limit", type=int, metavar="N", help="at most N documents of each task")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the run's config, e.g. --set eval.items=50 (run folder only)")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    tasks = [t for t in args.tasks.split(",") if t]
    targets = [Path(t) for t in args.targets]
    for t in targets:
        if not t.is_dir():
            raise TokenmillError(f"{t}: no such folder")
    if (targets[0] / "manifest.json").is_file():
        if len(targets) > 1 or args.include_path:
            raise TokenmillError("a run folder is evaluated alone, on its own tasks (no --include-path)")
        from tokenmill.config import load_config
        from tokenmill.run import run_pipeline

        overrides = [*args.overrides, f"run_dir={targets[0]}"]
        if tasks:
            overrides.append(f"eval.standard=[{','.join(tasks)}]")
        if args.limit:
            overrides.append(f"eval.limit={args.limit}")
        config = load_config(targets[0] / "config.yaml", overrides)
        run_pipeline(config, from_stage="09_eval", to_stage="09_eval")
        return 0
    if args.overrides:
        raise TokenmillError("--set applies to a run folder's config; model folders take --tasks and --limit")
    from tokenmill.eval.config import EvalConfig
    from tokenmill.eval.stage import available_standard_tasks, evaluate_model, format_table, score_table

    config = EvalConfig(builtin=False, standard=tasks, limit=args.limit)
    found = [t for t in tasks if args.include_path] or available_standard_tasks(tasks, lambda line: print(line, file=sys.stderr))
    if not found:
        raise TokenmillError("no task to run: name lm-eval tasks with --tasks (their data must be on this machine)")
    include = Path(args.include_path) if args.include_path else None
    results = {str(t): evaluate_model(t, found, include, config) for t in targets}
    print(format_table(score_table(results, deployed="")))
    return 0
