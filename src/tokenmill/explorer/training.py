"""Panels of the training and deployment blocks: 05 pre-training, 06 alignment, 08 deployment."""

from __future__ import annotations

from pathlib import Path

from tokenmill.explorer.files import read_json, read_jsonl
from tokenmill.explorer.progress import pretrain_logs
from tokenmill.explorer.sections import chart, facts, figure, label, note, stage_facts, stage_figures, table
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
        facts("your run", [
            ("optimizer steps", report.get("steps")), ("tokens seen", report.get("tokens")), ("parameters", report.get("params")),
            ("final training loss (nats per token)", final.get("train_loss")),
            ("validation loss (nats per token)", final.get("val_loss"), "on text the model never trained on"),
            ("validation perplexity", final.get("val_ppl"),
             "as unsure as choosing among this many tokens; the vocabulary is the ceiling"),
            ("throughput (tokens per second)", speed.get("tokens_per_s")),
            ("device", report.get("device")), ("precision", report.get("precision")), ("wall time (s)", report.get("seconds")),
            ("tokens per parameter", report.get("chinchilla", {}).get("tokens_per_param"),
             "Chinchilla's compute-optimal ratio is 20")]),
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


def _pct(x: object) -> str | None:
    return f"{x:.0%}" if isinstance(x, (int, float)) else None


def _n(x: object, digits: int = 2) -> str | None:
    return f"{x:,.{digits}f}" if isinstance(x, (int, float)) else None


def method_facts(method: str, d: dict) -> list[tuple]:
    """One alignment method's summary as labelled figures, each with what it means."""
    if method == "sft":
        return [("training steps", d.get("steps")), ("conversations trained on", d.get("train_conversations")),
                ("held-out loss (nats per token)", _n(d.get("eval_loss")),
                 f"down from {_n(d.get('eval_loss_before'))} before fine-tuning: answers became less surprising"),
                ("held-out next-token accuracy", _pct(d.get("eval_token_accuracy")),
                 "share of answer tokens the model predicts exactly"),
                ("wall time (s)", d.get("seconds"))]
    if method == "rm":
        return [("training steps", d.get("steps")), ("preference pairs trained on", d.get("train_pairs")),
                ("held-out accuracy", _pct(d.get("eval_accuracy")),
                 f"prefers the chosen answer on {_pct(d.get('eval_accuracy'))} of {d.get('eval_pairs')} held-out pairs, "
                 f"up from {_pct(d.get('eval_accuracy_before'))} before training (50% is chance)"),
                ("score margin, chosen minus rejected", _n(d.get("eval_margin")), "in reward units; larger means surer"),
                ("spread of scores (standard deviation)", _n(d.get("eval_reward_std")), "the scale a reward difference is read on"),
                ("wall time (s)", d.get("seconds"))]
    if method == "dpo":
        return [("training steps", d.get("steps")), ("KL strength β", d.get("beta"), "small β lets the model move further"),
                ("held-out preference accuracy", _pct(d.get("eval_accuracy")),
                 "pairs where the model's implicit reward ranks the chosen answer first"),
                ("likelihood accuracy", _pct(d.get("eval_logps_accuracy")),
                 f"chosen answer more likely than rejected; {_pct(d.get('eval_logps_accuracy_before'))} before DPO"),
                ("implicit reward margin", _n(d.get("eval_margin")), "chosen minus rejected, in units of β × log-probability"),
                ("wall time (s)", d.get("seconds"))]
    if method == "ppo":
        return [("training steps", d.get("steps")),
                ("mean reward, SFT → PPO", f"{_n(d.get('eval_reward_sft'))} → {_n(d.get('eval_reward_ppo'))}",
                 "the reward model's score of held-out answers, before and after PPO"),
                ("win rate against SFT", _pct(d.get("win_rate_vs_sft")), "held-out prompts where PPO's answer scores higher"),
                ("mean KL from the SFT model (nats)", _n(d.get("kl_mean")),
                 f"target {d.get('kl_target')}: how far the policy drifted to earn reward"),
                ("answer length, SFT → PPO (tokens)", f"{_n(d.get('eval_length_sft'), 1)} → {_n(d.get('eval_length_ppo'), 1)}",
                 "longer answers can be a sign of reward hacking"),
                ("wall time (s)", d.get("seconds"))]
    if method == "cai":
        return [("prompts", d.get("prompts")), ("critiques written", d.get("critiques")),
                ("revisions, used as preference pairs", d.get("preference_pairs"),
                 "the model's revision is preferred to its first answer"), ("wall time (s)", d.get("seconds"))]
    return []


METHOD_TITLES = {"sft": "supervised fine-tuning (SFT)", "rm": "reward model", "dpo": "direct preference optimisation (DPO)",
                 "ppo": "reinforcement learning (PPO)", "cai": "constitutional AI (self-critique)"}


def align_panel(run_dir: Path) -> list[dict | None]:
    root = run_dir / "06_align"
    if not root.is_dir():
        return [note("not run: 06_align is not in this run folder yet")]
    sections = [stage_facts(run_dir, "06_align")]
    summary = read_json(root / "summary.json", {}) or {}
    if summary:
        sections.append(facts("your run, in brief", [
            ("model handed to deployment", str(summary.get("deploy", "")).upper() or None),
            ("reward model accuracy", _pct(summary.get("rm_accuracy")), "held-out pairs it ranks as people did"),
            ("DPO win rate against SFT", _pct(summary.get("dpo_win_rate")),
             f"of {summary.get('win_rate_prompts')} prompts, judged by the reward model"),
            ("PPO win rate against SFT", _pct(summary.get("ppo_win_rate")), "50% would mean no better than SFT"),
        ]))
    for method in (*ALIGN_METHODS, "cai"):
        folder = root / method
        if not folder.is_dir():
            sections.append(note(f"{METHOD_TITLES[method]}: not run"))
            continue
        own = read_json(folder / "summary.json", {}) or {}
        sections.append(facts(METHOD_TITLES[method], method_facts(method, own)))
        sections.append(stage_figures(run_dir, f"06_align/{method}", f"{METHOD_TITLES[method]}: charts"))
    examples = read_jsonl(root / "cai" / "critiques.jsonl", limit=6)
    if examples:
        sections.append({"type": "samples", "title": "constitutional AI: original, critique, revision", "groups": [
            {"title": "examples", "count": len(examples), "items": [cai_item(i, e) for i, e in enumerate(examples)]}]})
    return sections


def cai_item(i: int, example: dict) -> dict:
    """One critique record as labelled parts: the known fields in reading order, then any other text."""
    order = ("prompt", "original", "response", "principle", "critique", "revision")
    keys = [k for k in order if k in example] + [k for k in example if k not in order and isinstance(example[k], str)]
    return {"id": f"example {i + 1}", "meta": "", "parts": [[label(k), _text(example[k])] for k in keys]}


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
