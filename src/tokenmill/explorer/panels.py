"""What each block's panel shows, read from the run folder: a list of sections the page draws
(see sections.py). The panels of the data blocks and the model are here, those of training and
deployment in training.py."""

from __future__ import annotations

from pathlib import Path

from tokenmill.explorer.documents import dedup_pairs, redaction_examples
from tokenmill.explorer.files import read_json
from tokenmill.explorer.ideas import idea
from tokenmill.explorer.sections import each_figure_once, facts, figure, label, note, stage_facts, stage_figures, table
from tokenmill.explorer.stages import BLOCKS, block_status, model_folders
from tokenmill.explorer.training import align_panel, deploy_panel, pretrain_panel
from tokenmill.figures import human_bytes

# --- 01 and 02 -------------------------------------------------------------------------------


def data_panel(run_dir: Path) -> list[dict | None]:
    stats = read_json(run_dir / "01_data" / "stats.json", {}) or {}
    sections = [
        stage_facts(run_dir, "01_data"),
        facts("the raw corpus", [("documents", stats.get("documents")), ("size", human_bytes(stats.get("bytes", 0))),
                                 ("units skipped", stats.get("skipped_total")), ("repaired", stats.get("repaired_total")),
                                 ("read in (s)", stats.get("seconds"))]),
        figure(run_dir, "size of each domain", "01_data/domains.svg"),
        table("sources", ["source", "documents", "bytes"],
              [[s.get("source"), s.get("documents"), human_bytes(s.get("bytes", 0))] for s in stats.get("sources", [])]),
        table("domains", ["domain", "documents", "bytes"],
              [[d, v.get("documents"), human_bytes(v.get("bytes", 0))] for d, v in stats.get("domains", {}).items()]),
        table("what could not be read", ["reason", "count", "first at", "detail"],
              [[reason, v.get("count"), (v.get("examples") or [{}])[0].get("location", ""),
                (v.get("examples") or [{}])[0].get("detail", "")] for reason, v in stats.get("skipped", {}).items()]),
    ]
    return sections + [stage_figures(run_dir, "01_data")]


def curate_panel(run_dir: Path) -> list[dict | None]:
    folder = run_dir / "02_curate"
    stats = read_json(folder / "stats.json", {}) or {}
    totals, blocks = stats.get("totals", {}), stats.get("blocks", [])
    mixture = read_json(folder / "mixture.json", {}) or {}
    sections = [
        stage_facts(run_dir, "02_curate"),
        facts("your run", [("documents in", totals.get("docs_in")),
                           ("documents kept", totals.get("docs_out"),
                            f"{totals.get('docs_out', 0) / max(totals.get('docs_in', 0), 1):.0%} survived the rules and deduplication"),
                            ("documents after mixing", mixture.get("docs_after"), "repeats of scarce domains counted"),
                            ("bytes in", human_bytes(totals.get("bytes_in", 0))),
                            ("bytes kept", human_bytes(totals.get("bytes_out", 0)))]),
        {"type": "follow", "title": "follow one document through the run"},
        figure(run_dir, "what each filter removed", "02_curate/curation.svg"),
        table("per filter", ["filter", "documents in", "removed", "bytes removed", "reasons"],
              [[b["name"], b.get("docs_in"), b.get("docs_in", 0) - b.get("docs_out", 0),
                human_bytes(b.get("bytes_in", 0) - b.get("bytes_out", 0)),
                ", ".join(f"{label(r.split('.', 1)[-1])} {v.get('docs', 0)}" for r, v in (b.get("removed") or {}).items())]
               for b in blocks]),
        {"type": "samples", "title": "removed examples, per rule", "groups": [
            {"title": label(reason.replace(".", ": ")), "count": r.get("docs", 0),
             "items": [{"id": s.get("id"), "meta": f"{s.get('source', '')} · {s.get('detail', '')}", "text": s.get("excerpt", "")}
                       for s in r.get("samples", [])]}
            for b in blocks for reason, r in (b.get("removed") or {}).items()]},
    ]
    fuzzy = next((b.get("fit", {}) for b in blocks if b["name"] == "fuzzy_dedup"), {})
    sections.append(facts("near-duplicate search (MinHash LSH)", [(k.replace("_", " "), fuzzy.get(k)) for k in
                          ("bands", "rows", "candidate_checks", "similar_pairs", "clusters", "dropped")]))
    sections.append({"type": "pairs", "title": "duplicates side by side (removed, kept)", "pairs": dedup_pairs(run_dir)})
    pii = next((b.get("counters", {}) for b in blocks if b["name"] == "pii"), {})
    sections.append(facts("personal data redacted", [(k.removeprefix("pii."), v) for k, v in pii.items() if k != "outside_domains"]))
    sections.append({"type": "redactions", "title": "redactions in the curated text", "examples": redaction_examples(run_dir)})
    domains = mixture.get("domains", {})
    if domains:
        sections.append(figure(run_dir, "the mixture: raw and effective share", "02_curate/mixture.svg"))
        sections.append(table("mixture", ["domain", "weight", "raw share", "effective share", "repeats", "bytes after"],
                              [[d, v.get("weight"), f"{v.get('raw_share', 0):.1%}", f"{v.get('effective_share', 0):.1%}",
                                v.get("effective_repeats"), human_bytes(v.get("bytes_after", 0))] for d, v in domains.items()]))
    return sections + [stage_figures(run_dir, "02_curate")]


# --- 03 and 04 --------------------------------------------------------------------------------


def tokenizer_panel(run_dir: Path) -> list[dict | None]:
    folder = run_dir / "03_tokenizer"
    stats = read_json(folder / "stats.json", {}) or {}
    meta = read_json(folder / "tokenmill_tokenizer.json", {}) or {}
    encoded = read_json(run_dir / "03_encode" / "encode_stats.json", {}) or {}
    compression = stats.get("compression", {})
    splits = encoded.get("splits", {})
    sections = [
        stage_facts(run_dir, "03_tokenizer"),
        facts("your run", [("kind", meta.get("kind")), ("vocabulary size", meta.get("vocab_size")),
                                ("bytes per token", compression.get("all", {}).get("bytes_per_token"),
                                 "how much text one token carries: more means the model sees more per step"),
                                ("encoder", meta.get("encoder")), ("hash", meta.get("hash")),
                                ("training tokens", splits.get("train", {}).get("tokens")),
                                ("validation tokens", splits.get("val", {}).get("tokens"))]),
        {"type": "tokenize", "title": "tokenize your own text"},
    ]
    if compression:
        sections.append(figure(run_dir, "compression per domain", "03_tokenizer/compression.svg"))
        sections.append(table("compression", ["domain", "documents", "bytes per token", "tokens per word"],
                              [[d, v.get("documents"), v.get("bytes_per_token"), v.get("tokens_per_word")]
                               for d, v in compression.items()]))
    sections.append(table("special tokens", ["token", "id"], [[t, i] for t, i in meta.get("special_tokens", {}).items()]))
    longest = stats.get("longest_tokens", [])[:15]
    if longest:
        sections.append(table("longest tokens", ["id", "token", "bytes"], [[t.get("id"), t.get("text"), t.get("bytes")] for t in longest]))
    return sections + [stage_figures(run_dir, "03_tokenizer"), stage_figures(run_dir, "03_encode")]


def model_config(run_dir: Path) -> dict:
    return read_json(run_dir / "04_model" / "model.json", {}) or {}


def architecture_panel(run_dir: Path) -> list[dict | None]:
    params = read_json(run_dir / "04_model" / "params.json", {}) or {}
    counts, flops = params.get("parameters", {}), params.get("flops_per_token", {})
    sections = [
        stage_facts(run_dir, "04_model"),
        {"type": "architecture", "title": "the architecture (model.json)", "config": model_config(run_dir),
         "preset": params.get("preset"), "attention": params.get("attention")},
        facts("your run: parameters and compute", [("parameters in all", counts.get("total")),
                                         ("in the token embedding", counts.get("embedding"),
                                          f"{counts.get('embedding', 0) / max(counts.get('total', 0), 1):.0%} of the model: "
                                          "small models spend much of their size on the vocabulary"),
                                         ("in the layers", counts.get("non_embedding")),
                                         ("forward FLOPs per token", flops.get("forward")),
                                         ("training FLOPs per token", flops.get("training"))]),
        figure(run_dir, "parameters per role", "04_model/params.svg"),
        table("parameters per role", ["role", "tensors", "parameters", "share"],
              [[r, v.get("tensors"), v.get("params"), f"{v.get('share', 0):.1%}"] for r, v in params.get("roles", {}).items()]),
    ]
    memory = params.get("training_memory_one_gpu", {})
    if memory:
        sections.append(table("training memory on one GPU", ["precision", *next(iter(memory.values())).keys()],
                              [[p, *(human_bytes(x) for x in v.values())] for p, v in memory.items()]))
    return sections


def weights_panel(run_dir: Path) -> list[dict | None]:
    models = model_folders(run_dir)
    if not models:
        return [note("not run: no model folder yet (stage 05 writes the first)")]
    config = model_config(run_dir)
    rows = []
    for m in models:
        folder = run_dir / m["path"]
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        rows.append([m["label"], m["path"], human_bytes(size), (folder / "quantization.json").is_file()])
    return [
        table("your run: model folders", ["model", "folder", "size", "quantized"], rows),
        {"type": "compare", "title": "compare the models: one prompt, every model", "models": models},
        {"type": "attention", "title": "attention on your prompt", "models": models,
         "layers": config.get("n_layers"), "heads": config.get("n_heads")},
        figure(run_dir, "parameters per role", "04_model/params.svg"),
    ]


def eval_panel(run_dir: Path) -> list[dict | None]:
    table_ = ((read_json(run_dir / "09_eval" / "summary.json", {}) or {}).get("table")) or {}
    tasks = table_.get("tasks", [])
    rows = [["chance", *(table_["chance"].get(t) for t in tasks)]] + [
        [key, *("" if t not in r["scores"] else f"{r['scores'][t]:.3f}"
                + (f" ({r['change'][t]:+.3f})" if t in r["change"] else "") for t in tasks)]
        for key, r in table_.get("models", {}).items()]
    return [stage_facts(run_dir, "09_eval"),
            table("every model on the same tasks (change from the model it was made from)", ["model", *tasks], rows),
            stage_figures(run_dir, "09_eval")]


def panel(run_dir: Path, number: str, engine_info: dict) -> dict:
    b = next(b for b in BLOCKS if b.number == number)
    status = block_status(run_dir, b)
    builders = {"01": data_panel, "02": curate_panel, "03": tokenizer_panel, "04": architecture_panel,
                "05": pretrain_panel, "06": align_panel, "07": weights_panel, "09": eval_panel}
    if number == "08":
        sections = deploy_panel(run_dir, engine_info)
    elif status == "not run" and number not in ("05", "07"):
        sections = [note(f"not run: {', '.join(b.folders)} is not in this run folder yet")]
    else:
        sections = builders[number](run_dir)
    return {"number": number, "title": b.title, "status": status, "sections": each_figure_once([idea(number), *sections])}
