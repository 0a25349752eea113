"""One document followed through the run: found in the raw corpus (stage 01), then what curation
did to it (the rule that removed it, or its redactions), its duplicate cluster, its tokens, its
weight in the mixture, and how surprising the pre-trained model finds each of its tokens.

Curation records every removal in `02_curate/removed.jsonl`; a run made before that file existed
still names the sampled removals (removed_samples.jsonl), and any other document missing from
the curated shards is reported as removed for a reason the run did not record.
"""

from __future__ import annotations

import re
from pathlib import Path

from tokenmill.curate.report import REMOVED_FILE
from tokenmill.errors import TokenmillError
from tokenmill.explorer.documents import placeholders, removed_samples
from tokenmill.explorer.files import read_json, read_jsonl
from tokenmill.explorer.sections import label
from tokenmill.shards import read_shards, shard_paths

SHOWN_CHARS = 2000  # of a document's text, tokens and loss strip
SEARCH_LIMIT = 20
_FUZZY_KEPT = re.compile(r"^(?P<kept>.+) \(estimated Jaccard [0-9.]+\)$")


def _docs(folder: Path):
    return read_shards(shard_paths(folder)) if folder.is_dir() else iter(())


def search(run_dir: Path, query: str, limit: int = SEARCH_LIMIT) -> list[dict]:
    """Raw documents whose id or text holds `query` (any, when it is empty): id, domain, a preview."""
    q = query.strip().lower()
    found = []
    for doc in _docs(run_dir / "01_data" / "shards"):
        if not q or q in doc.id.lower() or q in doc.text.lower():
            found.append({"id": doc.id, "source": doc.source, "preview": doc.text[:120]})
            if len(found) >= limit:
                break
    return found


def _find(folder: Path, doc_id: str):
    return next((d for d in _docs(folder) if d.id == doc_id), None)


def removals(run_dir: Path) -> list[dict]:
    """Every removal the curation stage recorded: id, block, reason, detail."""
    rows = read_jsonl(run_dir / "02_curate" / REMOVED_FILE)
    return rows or removed_samples(run_dir)


def duplicate_of(row: dict) -> str | None:
    """The kept document a removed duplicate copies, from its removal detail."""
    reason, detail = str(row.get("reason", "")), str(row.get("detail", ""))
    if reason == "exact_dedup.duplicate":
        return detail
    if reason == "fuzzy_dedup.near_duplicate" and (m := _FUZZY_KEPT.match(detail)):
        return m["kept"]
    return None


def redaction_segments(run_dir: Path, text: str) -> tuple[list[dict], dict[str, int]]:
    """`text` cut at each placeholder curation put in, each marked with its kind; and counts per kind."""
    kinds = {t: k for k, t in placeholders(run_dir).items() if t}
    if not kinds:
        return [{"text": text, "pii": None}], {}
    pattern = re.compile("|".join(re.escape(t) for t in sorted(kinds, key=len, reverse=True)))
    segments, counts, last = [], {}, 0
    for m in pattern.finditer(text):
        if m.start() > last:
            segments.append({"text": text[last:m.start()], "pii": None})
        kind = kinds[m.group()]
        segments.append({"text": m.group(), "pii": kind})
        counts[kind] = counts.get(kind, 0) + 1
        last = m.end()
    if last < len(text):
        segments.append({"text": text[last:], "pii": None})
    return segments, counts


def follow(run_dir: Path, doc_id: str, live) -> dict:
    """Document `doc_id`'s journey through the run (see the module's docstring)."""
    raw = _find(run_dir / "01_data" / "shards", doc_id)
    if raw is None:
        raise TokenmillError(f"no document '{doc_id}' in 01_data's shards")
    rows = removals(run_dir)
    removal = next((r for r in rows if r.get("id") == doc_id), None)
    curated = _find(run_dir / "02_curate" / "shards", doc_id) if removal is None else None
    out: dict = {"id": raw.id, "source": raw.source, "bytes": len(raw.text.encode("utf-8", "replace")),
                 "raw_text": raw.text[:SHOWN_CHARS], "kept": curated is not None}
    if removal is not None:
        reason = str(removal.get("reason", "")).split(".", 1)[-1]
        out["removed"] = {"block": label(str(removal.get("block", ""))), "reason": label(reason), "detail": removal.get("detail", "")}
    elif curated is None:
        out["removed"] = {"block": None, "reason": "not recorded by this run's curation", "detail": ""}
    kept_of = duplicate_of(removal) if removal else None
    copies = [r["id"] for r in rows if duplicate_of(r) == doc_id]
    out["duplicates"] = {"kept_copy": kept_of, "removed_copies": copies[:20], "removed_count": len(copies)}
    if curated is None:
        return out
    text = curated.text[:SHOWN_CHARS]
    out["curated_segments"], out["redactions"] = redaction_segments(run_dir, text)
    out["changed_by_curation"] = curated.text != raw.text
    mixture = (read_json(run_dir / "02_curate" / "mixture.json", {}) or {}).get("domains", {}).get(raw.source)
    if mixture:
        out["mixture"] = {"weight": mixture.get("weight"), "repeats": mixture.get("effective_repeats"),
                          "raw_share": mixture.get("raw_share"), "effective_share": mixture.get("effective_share")}
    if (run_dir / "03_tokenizer").is_dir():
        out["tokens"] = live.tokenize(text)
    out["loss"] = live.token_losses("pretrained", text)
    return out
