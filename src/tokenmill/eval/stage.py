"""Stage 09: every model of the run on the same tasks, through lm-evaluation-harness.

The built-in tasks (tasks.py) are written into the stage folder and run with lm-eval's own
`simple_evaluate`, as an include path; standard lm-eval tasks named in the config run where
their data are at hand (this machine may have no access to the Hugging Face hub: a task whose
data cannot be loaded is reported and left out, not failed). The table has the models as rows,
the tasks as columns, each task's chance level, and each model's change from the model it was
made from (SFT from the pre-trained model, DPO and PPO from SFT, the quantized model from the
deployed one).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenmill.atomic import write_json, write_text
from tokenmill.errors import TokenmillError
from tokenmill.eval.config import EvalConfig
from tokenmill.eval.tasks import CHANCE, held_out_documents, held_out_items, write_builtin_tasks
from tokenmill.figures import grouped_bars

# The model folders of a run, in pipeline order.
RUN_MODELS = {"pretrained": "05_pretrain/model", "sft": "06_align/sft", "dpo": "06_align/dpo",
              "ppo": "06_align/ppo", "quantized": "08_quantize/model"}
# Each task's headline metric as lm-eval names it in its results ("metric,filter").
METRIC_KEYS = ("bits_per_byte,none", "acc,none", "exact_match,strip", "exact_match,none", "acc_norm,none")
STANDARD_CHANCE = {"hellaswag": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25, "piqa": 0.5, "lambada_openai": 0.0}
FIGURES = ["scores.svg", "bits_per_byte.svg"]


def previous_model(key: str, deployed: str) -> str | None:
    """The model `key` was made from."""
    return {"sft": "pretrained", "dpo": "sft", "ppo": "sft", "quantized": deployed}.get(key)


def headline(task_results: dict[str, Any]) -> tuple[str, float]:
    for key in METRIC_KEYS:
        if isinstance(task_results.get(key), (int, float)):
            return key.split(",")[0], float(task_results[key])
    raise TokenmillError(f"no known metric among the results {sorted(task_results)}")


def _quiet() -> contextlib.AbstractContextManager:
    """lm-eval logs every task it builds at INFO: the stage's own log says what matters."""
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    return contextlib.redirect_stdout(io.StringIO())


def available_standard_tasks(names: list[str], log: Callable[[str], None]) -> list[str]:
    """The standard tasks whose data load here; a clear line for each that does not."""
    if not names:
        return []
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager()
    found = []
    for name in names:
        try:
            with _quiet():
                get_task_dict([name], manager)
            found.append(name)
        except Exception as e:  # lm-eval and datasets raise many kinds for a missing dataset or name
            log(f"standard task {name} skipped: its data are not available on this machine "
                f"(no download from the Hugging Face hub here): {type(e).__name__}: {str(e)[:200]}")
    return found


def evaluate_model(model_dir: Path, tasks: list[str], include_path: Path | None, config: EvalConfig) -> dict[str, dict]:
    """lm-eval's results for one model folder: {task: {"metric,filter": value, ...}}."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from tokenmill.eval.lm import TokenmillLM

    # tokenmill's models were trained with BOS before every document: score them as they read text.
    lm = TokenmillLM(pretrained=str(model_dir), batch_size=config.batch_size, add_bos_token=True, device="cpu")
    manager = TaskManager(include_path=str(include_path) if include_path else None, include_defaults=bool(config.standard))
    with _quiet():
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=config.limit,
                                      bootstrap_iters=0, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    return out["results"]


def score_table(results: dict[str, dict[str, dict]], deployed: str) -> dict[str, Any]:
    """Models as rows, tasks as columns: each score, its metric, chance level and change."""
    tasks = list(dict.fromkeys(t for r in results.values() for t in r))
    metrics, rows = {}, {}
    for key, per_task in results.items():
        scores = {}
        for task in tasks:
            if task in per_task:
                metrics[task], scores[task] = headline(per_task[task])
        rows[key] = {"scores": scores}
    for key, row in rows.items():
        before = previous_model(key, deployed)
        row["previous"] = before if before in rows else None
        row["change"] = {t: v - rows[before]["scores"][t] for t, v in row["scores"].items()
                         if before in rows and t in rows[before]["scores"]}
    chance = {t: CHANCE.get(t, STANDARD_CHANCE.get(t)) for t in tasks}
    return {"tasks": tasks, "metric": metrics, "chance": chance, "models": rows}


def format_table(table: dict[str, Any]) -> str:
    tasks = table["tasks"]
    lines = [f"{'model':<11}" + "".join(f"{t:>16}" for t in tasks),
             f"{'chance':<11}" + "".join(f"{'' if table['chance'][t] is None else format(table['chance'][t], '.3f'):>16}"
                                         for t in tasks)]
    for key, row in table["models"].items():
        cells = []
        for t in tasks:
            v, d = row["scores"].get(t), row["change"].get(t)
            cells.append("" if v is None else f"{v:.3f}" + ("" if d is None else f" ({d:+.3f})"))
        lines.append(f"{key:<11}" + "".join(f"{c:>16}" for c in cells))
    return "\n".join(lines)


def draw_charts(table: dict[str, Any], out: Path) -> None:
    models = list(table["models"])
    for name, keep in (("scores.svg", lambda t: table["metric"][t] != "bits_per_byte"),
                       ("bits_per_byte.svg", lambda t: table["metric"][t] == "bits_per_byte")):
        tasks = [t for t in table["tasks"] if keep(t)]
        series = {m: [table["models"][m]["scores"].get(t, 0.0) for t in tasks] for m in models}
        percent = name == "scores.svg"
        title = "Accuracy per task (chance: " + ", ".join(f"{t} {table['chance'][t]:.0%}" for t in tasks
                                                         if table["chance"][t] is not None) + ")" if percent \
            else "Bits per byte on held-out text (lower is better)"
        write_text(out / name, grouped_bars(title, tasks, series, ylabel="" if percent else "bits per byte",
                                            percent=percent))


def eval_stage(run_root: Path, config: EvalConfig, deployed: str, val_fraction: float, out: Path,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the built-in tasks into `out`/tasks, evaluate every model of the run on them and on the
    standard tasks at hand, and write summary.json and the charts; return the stage's metrics."""
    from tokenmill.align.builtin import read_documents

    models = {k: run_root / RUN_MODELS[k] for k in config.models if (run_root / RUN_MODELS[k] / "model.json").is_file()}
    if not models:
        raise TokenmillError(f"no model folder of {', '.join(config.models)} in {run_root}")
    tasks, include = [], None
    if config.builtin:
        texts = held_out_documents(read_documents([run_root / "02_curate" / "shards"]), val_fraction,
                                   config.bytes_per_domain)
        items = held_out_items(run_root / "06_align" / "data" / "pref_eval.jsonl")
        include = out / "tasks"
        tasks += write_builtin_tasks(include, texts, items, max_items=config.items)
    tasks += available_standard_tasks(config.standard, log)
    if not tasks:
        raise TokenmillError("eval: no task to run (builtin is off and no standard task is available)")
    results = {}
    for key, folder in models.items():
        log(f"evaluating {key} ({folder.relative_to(run_root)}) on {len(tasks)} tasks")
        results[key] = evaluate_model(folder, tasks, include, config)
    table = score_table(results, deployed)
    write_json(out / "summary.json", {"table": table, "results": results})
    draw_charts(table, out)
    log(format_table(table))
    return {"table": table, "models": list(models), "tasks": tasks}
