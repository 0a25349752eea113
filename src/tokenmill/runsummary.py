"""The table a run ends with: per stage, whether it ran, its wall time and its key figure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenmill.runfolder import RunFolder


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _num(value: Any, spec: str) -> str:
    return "?" if value is None else format(value, spec)


# One line a person reads to see that the stage did its work; a missing metric shows as "?".
HEADLINES: dict[str, Callable[[dict], str]] = {
    "01_data": lambda m: f"{m.get('documents', 0):,} documents, {_mb(m.get('bytes', 0))}",
    "02_curate": lambda m: (
        f"kept {m.get('documents_kept', 0):,} of {m.get('documents_in', 0):,} documents; "
        f"mixture {_mb(m.get('bytes_mixed', 0))}"
    ),
    "03_tokenizer": lambda m: f"{m.get('kind', '?')} vocabulary {m.get('vocab_size', 0):,}",
    "03_encode": lambda m: f"{m.get('tokens', 0):,} tokens, {_num(m.get('bytes_per_token'), '.2f')} bytes/token",
    "04_model": lambda m: f"{m.get('params', 0):,} parameters",
    "05_pretrain": lambda m: (
        f"val loss {_num(m.get('val_loss'), '.3f')} (unigram entropy {_num(m.get('unigram_entropy'), '.2f')}), "
        f"{_num(m.get('tokens_per_s'), ',.0f')} tokens/s"
    ),
    "06_align": lambda m: (
        f"RM accuracy {_num(m.get('rm_accuracy'), '.2f')}, DPO accuracy {_num(m.get('dpo_accuracy'), '.2f')}, "
        f"margin {_num(m.get('dpo_margin'), '.2f')}; win rate over SFT: DPO {_num(m.get('dpo_win_rate'), '.2f')}, "
        f"PPO {_num(m.get('ppo_win_rate'), '.2f')}"
    ),
    "08_quantize": lambda m: (
        f"{m.get('method', '?')} int{m.get('bits', '?')}: {m.get('layer_compression', 0):.1f}x smaller layers, "
        f"perplexity {_num(m.get('fp32_perplexity'), '.2f')} -> {_num(m.get('perplexity'), '.2f')}"
    ),
    "09_eval": lambda m: "; ".join(
        f"{t}: " + ", ".join(f"{k} {r['scores'][t]:.3f}" for k, r in m["table"]["models"].items() if t in r["scores"])
        for t in m.get("table", {}).get("tasks", []) if not t.startswith("bpb_")
    ),
}


def summary_rows(run: RunFolder, stages: list[str], ran: set[str]) -> list[dict[str, Any]]:
    rows = []
    for name in stages:
        entry = run.entry(name) or {}
        headline = HEADLINES.get(name)
        metrics = entry.get("metrics") or {}
        rows.append({
            "stage": name,
            "ran": name in ran,
            "wall_time_s": entry.get("wall_time_s"),
            "figure": headline(metrics) if headline and metrics else "",
            # The evaluation's table (models as rows, tasks as columns) goes into summary.json whole.
            **({"table": metrics["table"]} if "table" in metrics else {}),
        })
    return rows


def format_summary(rows: list[dict[str, Any]]) -> str:
    """A plain-text table; wall times are those of the stage's last run, skipped or not."""
    lines = [f"{'stage':<13} {'this run':<9} {'wall':>8}  key figure"]
    for row in rows:
        wall = "" if row["wall_time_s"] is None else f"{row['wall_time_s']:.1f} s"
        lines.append(f"{row['stage']:<13} {'ran' if row['ran'] else 'skipped':<9} {wall:>8}  {row['figure']}")
    total = sum(r["wall_time_s"] for r in rows if r["ran"] and r["wall_time_s"] is not None)
    lines.append(f"{'':<13} {'':<9} {total:>6.1f} s  wall time of the stages that ran")
    return "\n".join(lines)
