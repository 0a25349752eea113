"""Panels of the training and deployment blocks: 05 pre-training, 06 alignment, 08 deployment."""

from __future__ import annotations

from pathlib import Path

from tokenmill.explorer.files import read_json, read_jsonl
from tokenmill.explorer.progress import pretrain_logs
from tokenmill.explorer.sections import chart, facts, figure, note, stage_facts, stage_figures, table
from tokenmill.figures import human_bytes

ALIGN_METHODS = ("sft", "rm", "dpo", "ppo")
# Pre-training's charts, (NAME, title): the stage writes NAME.svg; while it runs the explorer draws them live.
PRETRAIN_CHARTS = (("loss", "loss and validation loss"), ("lr", "learning rate"), ("grad_norm", "gradient norm"))


def checkpoints(run_dir: Path) -> list[list]:
    root = run_dir / "05_pretrain.work" / "checkpoints"
    rows = []
    for kind, folder in (("golden", root / "golden"), ("regular", root)):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("step-*")):
            marker = read_json(path / "tokenmill_checkpoint.json")
            if marker is None:
                continue  # being written
            state = marker.get("state", {})
            rows.append([kind, marker.get("step"), state.get("tokens"), f"05_pretrain.work/checkpoints/"
                         f"{'golden/' if kind == 'golden' else ''}{path.name}"])
    return sorted(rows, key=lambda r: (r[1] or 0, r[0]))


def pretrain_panel(run_dir: Path) -> list[dict | None]:
    logs = pretrain_logs(run_dir)
    if logs is None:
        return [note("not run: no training logs in 05_pretrain yet")]
    in_progress = logs.name.endswith(".work")
    # The report is written as the stage finishes; while it runs, any report is the last run's.
    report = {} if in_progress else read_json(logs / "report.json", {}) or {}
    final, speed = report.get("final", {}), report.get("throughput", {})
    sections = [stage_facts(run_dir, "05_pretrain")]
    if in_progress:
        sections.append(note("training is in progress: the charts show the steps logged so far"))
    sections += [
        facts("the run", [("steps", report.get("steps")), ("tokens", report.get("tokens")), ("parameters", report.get("params")),
                          ("final train loss", final.get("train_loss")), ("validation loss", final.get("val_loss")),
                          ("validation perplexity", final.get("val_ppl")), ("tokens per second", speed.get("tokens_per_s")),
                          ("device", report.get("device")), ("precision", report.get("precision")),
                          ("seconds", report.get("seconds")),
                          ("tokens per parameter", report.get("chinchilla", {}).get("tokens_per_param"))]),
        *(chart(title, f"chart/05/{name}.svg") if in_progress else figure(run_dir, title, f"05_pretrain/{name}.svg")
          for name, title in PRETRAIN_CHARTS),
        table("checkpoints (golden ones are kept for good)", ["kind", "step", "tokens", "folder"], checkpoints(run_dir)),
    ]
    events = read_jsonl(logs / "events.jsonl")
    if events:
        sections.append(table("events (loss spikes, rollbacks)", sorted({k for e in events for k in e}),
                              [[e.get(k, "") for k in sorted({k for e in events for k in e})] for e in events]))
    samples = read_jsonl(logs / "samples.jsonl")
    if samples:
        sections.append({"type": "samples", "title": "what the model wrote as it trained", "groups": [
            {"title": "samples", "count": len(samples),
             "items": [{"id": f"step {s.get('step')}", "meta": f"prompt: {s.get('prompt', '')}", "text": s.get("text", "")}
                       for s in samples]}]})
    return sections + [None if in_progress else stage_figures(run_dir, "05_pretrain")]


def align_panel(run_dir: Path) -> list[dict | None]:
    root = run_dir / "06_align"
    if not root.is_dir():
        return [note("not run: 06_align is not in this run folder yet")]
    sections = [stage_facts(run_dir, "06_align")]
    summary = read_json(root / "summary.json", {}) or {}
    if summary:
        brief = [(k, v) for k, v in summary.items() if not isinstance(v, (dict, list))]
        brief += [(f"seconds: {k}", v) for k, v in (summary.get("seconds") or {}).items()]
        sections.append(facts("alignment, in brief", brief))
    for method in (*ALIGN_METHODS, "cai"):
        folder = root / method
        if not folder.is_dir():
            sections.append(note(f"{method.upper()}: not run"))
            continue
        own = read_json(folder / "summary.json", {}) or {}
        sections.append(facts(method.upper(), [(k, v) for k, v in own.items() if not isinstance(v, (dict, list))]))
        sections.append(stage_figures(run_dir, f"06_align/{method}", f"{method.upper()}: figures written by the stage"))
    examples = read_jsonl(root / "cai" / "critiques.jsonl", limit=6)
    if examples:
        sections.append({"type": "samples", "title": "constitutional AI: original, critique, revision", "groups": [
            {"title": "examples", "count": len(examples), "items": [cai_item(i, e) for i, e in enumerate(examples)]}]})
    return sections


def cai_item(i: int, example: dict) -> dict:
    """One critique record as labelled parts: the known fields in reading order, then any other text."""
    order = ("prompt", "original", "response", "principle", "critique", "revision")
    keys = [k for k in order if k in example] + [k for k in example if k not in order and isinstance(example[k], str)]
    return {"id": f"example {i + 1}", "meta": "", "parts": [[k, _text(example[k])] for k in keys]}


def _text(v: object) -> str:
    if isinstance(v, list):  # a message list
        return "\n".join(f"{m.get('role', '')}: {m.get('content', '')}" if isinstance(m, dict) else str(m) for m in v)
    return str(v)


def deploy_panel(run_dir: Path, engine_info: dict) -> list[dict | None]:
    folder = run_dir / "08_quantize"
    sections = []
    if folder.is_dir():
        metrics = ((read_json(run_dir / "manifest.json", {}) or {}).get("stages", {}).get("08_quantize", {})
                   .get("metrics", {}))
        sections += [stage_facts(run_dir, "08_quantize"),
                     facts("quantization", [("method", metrics.get("method")), ("bits", metrics.get("bits")),
                                            ("group size", metrics.get("group_size")),
                                            ("file size", human_bytes(metrics.get("file_bytes", 0))),
                                            ("full-precision file size", human_bytes(metrics.get("source_file_bytes", 0))),
                                            ("layer compression", metrics.get("layer_compression"))])]
        rows = read_json(folder / "eval.json", {}) or {}
        if rows:
            speeds = sorted({k for r in rows.values() for k in r if k.startswith("decode_tok_s_batch")},
                            key=lambda k: int(k.removeprefix("decode_tok_s_batch")))
            sections.append(table("quantization: size, perplexity, speed",
                                  ["variant", "file size", "layer compression", "perplexity", "change",
                                   *(f"decode tok/s, batch {k.removeprefix('decode_tok_s_batch')}" for k in speeds)],
                                  [[name, human_bytes(r.get("file_bytes", 0)), r.get("layer_compression"), r.get("perplexity"),
                                    f"{r.get('perplexity_change', 0):+.2%}", *(r.get(k) for k in speeds)]
                                   for name, r in rows.items()]))
        else:
            sections.append(note("the comparison table was not made (quantize.eval was off)"))
        sections.append(stage_figures(run_dir, "08_quantize"))
    else:
        sections.append(note("not run: 08_quantize is not in this run folder yet"))
    sections.append({"type": "engine", "title": "the serving engine, live", **engine_info})
    sections.append({"type": "chat", "title": "chat with the served model", **engine_info})
    return sections
