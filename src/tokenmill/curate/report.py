"""The record of a curation run: `stats.json`, `removed_samples.jsonl`, `removed.jsonl`, `curation.svg`, the table.

The statistics come from the completion markers of the tasks, so a resumed run reports the
whole corpus, not only the part it redid.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tokenmill.atomic import write_text
from tokenmill.curate.block import Block, BlockStats, CorpusBlock
from tokenmill.curate.pii import PIIRedactor
from tokenmill.curate.trained import METRICS_FILE
from tokenmill.curate.workdir import DONE
from tokenmill.figures import funnel_chart, human_bytes

REMOVED_FILE = "removed.jsonl"  # one line per removed document: which block removed it, and why
FIT_SUMMARIES = (DONE, METRICS_FILE)  # a corpus block's own summary of its fit, copied into stats.json


def merge_block_stats(group: list[Block], results: list[dict], fits: dict[str, tuple[Path, float]]) -> list[dict]:
    """Each block's statistics over every task of its pass, in the order of the pieces."""
    merged = []
    for j, block in enumerate(group):
        total = BlockStats(block.name)
        seconds = 0.0
        for r in results:
            b = r["blocks"][j]
            s = BlockStats.from_dict(block.name, b["stats"])
            s.in_by_domain.update(b["in_by_domain"])
            s.removed_by_domain.update(b["removed_by_domain"])
            total.merge(s)
            seconds += b["seconds"]
        entry = {"name": block.name, "kind": "corpus" if isinstance(block, CorpusBlock) else "document", **total.to_dict()}
        entry["in_by_domain"] = dict(sorted(total.in_by_domain.items()))
        entry["removed_by_domain"] = dict(sorted(total.removed_by_domain.items()))
        entry["apply_seconds"] = round(seconds, 3)
        if block.name in fits:
            entry["fit_seconds"] = fits[block.name][1]
            entry["fit"] = fit_summary(fits[block.name][0])
        merged.append(entry)
    return merged


def fit_summary(state: Path) -> dict[str, Any]:
    """What a corpus block says about its fit: its `done.json` and `metrics.json`, when small."""
    summary: dict[str, Any] = {}
    for name in FIT_SUMMARIES:
        path = state / name
        if path.is_file() and path.stat().st_size <= 65_536:
            content = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(content, dict):
                summary.update({k: v for k, v in content.items() if k != "done"})
    return summary


def publish_fit_figures(fits: dict[str, tuple[Path, float]], out_dir: Path) -> list[str]:
    """Copy the charts corpus blocks drew in their fit into the output folder; return their names."""
    names = []
    for block, (state, _) in fits.items():
        for svg in sorted(state.glob("*.svg")):
            name = f"{block}.svg" if svg.stem == block else f"{block}-{svg.stem}.svg"
            shutil.copyfile(svg, out_dir / name)
            names.append(name)
    return names


def sum_domains(parts: Any) -> dict[str, list[int]]:
    """[documents, bytes] per domain, summed over `parts`."""
    total: dict[str, list[int]] = {}
    for part in parts:
        for domain, (n, b) in part.items():
            cell = total.setdefault(domain, [0, 0])
            cell[0] += n
            cell[1] += b
    return dict(sorted(total.items()))


def input_report(split: list[dict], domains: dict[str, list[int]]) -> dict[str, Any]:
    skipped: dict[str, dict[str, Any]] = {}
    for r in split:
        for reason, s in r["skipped"].items():
            cell = skipped.setdefault(reason, {"count": 0, "examples": []})
            cell["count"] += s["count"]
            cell["examples"].extend(s["examples"][: 20 - len(cell["examples"])])
    return {
        "docs": sum(n for n, _ in domains.values()),
        "bytes": sum(b for _, b in domains.values()),
        "domains": domains,
        "skipped_total": sum(s["count"] for s in skipped.values()),
        "skipped": skipped,
    }


def domain_table(before: dict[str, list[int]], after: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    table = {}
    for domain in sorted(before):
        (nb, bb), (na, ba) = before[domain], after.get(domain, [0, 0])
        table[domain] = {"docs_in": nb, "bytes_in": bb, "docs_out": na, "bytes_out": ba,
                         "bytes_kept_share": round(ba / bb, 4) if bb else 0.0}
    return table


def total_counts(report: dict[str, Any]) -> dict[str, Any]:
    docs_in, bytes_in = report["input"]["docs"], report["input"]["bytes"]
    docs_out = sum(d["docs_out"] for d in report["domains"].values())
    bytes_out = sum(d["bytes_out"] for d in report["domains"].values())
    return {
        "docs_in": docs_in, "bytes_in": bytes_in, "docs_out": docs_out, "bytes_out": bytes_out,
        "docs_removed": docs_in - docs_out, "bytes_removed": bytes_in - bytes_out,
        "errors": sum(b["errors"] for b in report["blocks"]),
    }


def redact_samples(report_blocks: list[dict], blocks: list[Block]) -> None:
    """Run the PII block over every sample excerpt, when the run redacts PII.

    Blocks before PII redaction keep raw excerpts of what they remove; published as they are,
    stats.json would leak the very addresses the run was configured to remove.
    """
    redactor = next((b for b in blocks if isinstance(b, PIIRedactor) and b.enabled), None)
    if redactor is None:
        return
    for b in report_blocks:
        for r in b["removed"].values():
            for sample in r["samples"]:
                sample["excerpt"] = redactor.redact(sample["excerpt"], redactor.find(sample["excerpt"]))


def write_samples(path: Path, blocks: list[dict]) -> None:
    lines = [
        json.dumps({"block": b["name"], "reason": reason, **sample}, ensure_ascii=False)
        for b in blocks for reason, r in b["removed"].items() for sample in r["samples"]
    ]
    write_text(path, "".join(line + "\n" for line in lines))


def write_removals(path: Path, removals: list[list[str]]) -> None:
    """The fate of every removed document (a kept one is in the shards), so that one document can
    be followed through curation, not only the few samples each rule keeps."""
    lines = [json.dumps({"id": i, "block": b, "reason": r, "detail": d}, ensure_ascii=False) for i, b, r, d in removals]
    write_text(path, "".join(line + "\n" for line in lines))


def kept_chart(report: dict[str, Any]) -> str:
    """The funnel of documents through the blocks: what each left, and what it removed."""
    first = report["input"]
    steps = [("input", first["docs"], 0, f"{first['docs']:,} ({human_bytes(first['bytes'])})")]
    for b in report["blocks"]:
        removed = b["docs_in"] - b["docs_out"]
        note = f"{b['docs_out']:,} left ({human_bytes(b['bytes_out'])})" + (f", {removed:,} removed" if removed else "")
        steps.append((b["name"], b["docs_out"], removed, note))
    return funnel_chart("Documents left after each curation block", steps)


def print_table(report: dict[str, Any], out: Any) -> None:
    print(f"{'block':<18} {'docs in':>9} {'removed':>9} {'bytes in':>12} {'bytes removed':>14} {'errors':>7}", file=out)
    for b in report["blocks"]:
        print(
            f"{b['name']:<18} {b['docs_in']:>9,} {b['docs_in'] - b['docs_out']:>9,} {b['bytes_in']:>12,} "
            f"{b['bytes_in'] - b['bytes_out']:>14,} {b['errors']:>7,}",
            file=out,
        )
    t = report["totals"]
    print(f"kept {t['docs_out']:,} of {t['docs_in']:,} documents, {human_bytes(t['bytes_out'])} of "
          f"{human_bytes(t['bytes_in'])} ({report['seconds']} s)", file=out)
