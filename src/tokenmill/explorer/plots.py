"""The data behind each chart the panels name (`chart/NN/NAME.svg`), drawn by charts.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tokenmill.explorer import charts
from tokenmill.explorer.files import read_json, read_jsonl
from tokenmill.explorer.panels import model_config
from tokenmill.explorer.training import align_chart_keys, align_series, pretrain_logs
from tokenmill.figures import human_bytes


class NoChart(LookupError):
    """The run holds nothing to draw this chart from."""


def _need(value):
    if not value:
        raise NoChart("nothing to draw")
    return value


def domains(run_dir: Path) -> str:
    stats = _need((read_json(run_dir / "01_data" / "stats.json", {}) or {}).get("domains"))
    names = list(stats)
    return charts.bar_chart("bytes per domain", names, [stats[d]["bytes"] for d in names],
                            [f"{human_bytes(stats[d]['bytes'])}, {stats[d]['documents']:,} docs" for d in names])


def funnel(run_dir: Path) -> str:
    stats = read_json(run_dir / "02_curate" / "stats.json", {}) or {}
    blocks = _need(stats.get("blocks"))
    steps = [("input", blocks[0]["docs_in"], 0)]
    steps += [(b["name"], b["docs_out"], b["docs_in"] - b["docs_out"]) for b in blocks]
    return charts.funnel_chart("documents through the filters", steps)


def mixture(run_dir: Path) -> str:
    domains = _need((read_json(run_dir / "02_curate" / "mixture.json", {}) or {}).get("domains"))
    names = list(domains)
    return charts.grouped_bars("share of the corpus per domain", names, {
        "raw": [domains[d].get("raw_share", 0) for d in names],
        "effective (after mixing)": [domains[d].get("effective_share", 0) for d in names],
    }, percent=True)


def compression(run_dir: Path) -> str:
    per = _need((read_json(run_dir / "03_tokenizer" / "stats.json", {}) or {}).get("compression"))
    names = list(per)
    return charts.bar_chart("bytes per token (more is better compression)", names,
                            [per[d]["bytes_per_token"] for d in names], [f"{per[d]['bytes_per_token']:.2f}" for d in names])


def params(run_dir: Path) -> str:
    from tokenmill.model.anatomy import role_totals, tensor_rows
    from tokenmill.model.config import read_config

    _need(model_config(run_dir))
    totals = role_totals(tensor_rows(read_config(run_dir / "04_model" / "model.json")))
    rows = [(role, t) for role, t in totals.items() if t["params"]]
    return charts.bar_chart("parameters per role", [r for r, _ in rows], [t["params"] for _, t in rows],
                            [f"{charts.human(t['params'])} ({t['share']:.1%})" for _, t in rows])


def _pretrain_series(run_dir: Path, key: str) -> list[tuple[float, float]]:
    logs = pretrain_logs(run_dir)
    rows = read_jsonl(logs / "metrics.jsonl") if logs else []
    return [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]


def _line(title: str, named: dict[str, list[tuple[float, float]]], ylabel: str, log_y: bool = False) -> str:
    series = [(name, [x for x, _ in pts], [y for _, y in pts]) for name, pts in named.items() if pts]
    return charts.line_chart(title, _need(series), ylabel=ylabel, log_y=log_y)


def loss(run_dir: Path) -> str:
    report = read_json(run_dir / "05_pretrain" / "report.json", {}) or {}
    entropy = report.get("baselines", {}).get("unigram_entropy")
    series = [(name, [x for x, _ in pts], [y for _, y in pts])
              for name, pts in (("train loss", _pretrain_series(run_dir, "loss")),
                                ("validation loss", _pretrain_series(run_dir, "val_loss"))) if pts]
    return charts.line_chart("loss", _need(series), ylabel="nats per token",
                             hlines=[("unigram entropy", entropy)] if entropy else ())


def lr(run_dir: Path) -> str:
    return _line("learning rate", {"lr": _pretrain_series(run_dir, "lr")}, "learning rate")


def grad_norm(run_dir: Path) -> str:
    return _line("gradient norm (before clipping)", {"grad norm": _pretrain_series(run_dir, "grad_norm")}, "L2 norm",
                 log_y=True)


def align(run_dir: Path, name: str) -> str:
    method = name.split("-", 1)[0]
    found = next((c for c in align_chart_keys(run_dir, method) if c[0] == name), None)
    if found is None:
        raise NoChart(name)
    series = align_series(run_dir, method)
    return _line(found[1], {k: series[k] for k in found[2]}, "")


CHARTS: dict[str, dict[str, Callable[[Path], str]]] = {
    "01": {"domains": domains},
    "02": {"funnel": funnel, "mixture": mixture},
    "03": {"compression": compression},
    "04": {"params": params},
    "05": {"loss": loss, "lr": lr, "grad_norm": grad_norm},
}


def draw(run_dir: Path, number: str, name: str) -> str:
    """The SVG of chart `name` of block `number`; NoChart when there is no such chart or nothing to draw."""
    if number == "06":
        return align(run_dir, name)
    fn = CHARTS.get(number, {}).get(name)
    if fn is None:
        raise NoChart(f"no chart {number}/{name}")
    try:
        return fn(run_dir)
    except (KeyError, TypeError, IndexError) as e:
        raise NoChart(f"chart {number}/{name}: the run's files lack {e}") from None
