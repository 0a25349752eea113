"""Documents the curation stage touched, made ready to show: duplicate pairs side by side, and
redactions marked where they are.

Both are returned as segments of plain text with a mark each; the page puts every segment into
the document as text, never as markup.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

from tokenmill.curate.pii import PLACEHOLDERS
from tokenmill.explorer.files import read_json, read_jsonl, read_yaml
from tokenmill.shards import read_shards, shard_paths

SHOWN_CHARS = 3000  # of each document of a pair
CONTEXT_CHARS = 160  # either side of a redaction
_WORDS = re.compile(r"\S+\s*|\s+")  # a word with the space after it
_FUZZY = re.compile(r"^(?P<kept>.+) \(estimated Jaccard (?P<jaccard>[0-9.]+)\)$")


def removed_samples(run_dir: Path) -> list[dict]:
    """Every removed example the curation stage kept: removed_samples.jsonl, else stats.json's samples."""
    folder = run_dir / "02_curate"
    rows = read_jsonl(folder / "removed_samples.jsonl")
    if rows:
        return rows
    stats = read_json(folder / "stats.json", {}) or {}
    return [
        {"block": b.get("name"), "reason": reason, **sample}
        for b in stats.get("blocks", [])
        for reason, r in (b.get("removed") or {}).items()
        for sample in r.get("samples", [])
    ]


def _texts(folder: Path, ids: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    if not ids or not folder.is_dir():
        return found
    for doc in read_shards(shard_paths(folder)):
        if doc.id in ids:
            found[doc.id] = doc.text
            if len(found) == len(ids):
                break
    return found


def _word_segments(text: str, other: str) -> list[dict]:
    """`text` in runs of words, each run marked `same` when the other document has it at that place too."""
    words, other_words = _WORDS.findall(text), _WORDS.findall(other)
    matcher = difflib.SequenceMatcher(None, words, other_words, autojunk=False)
    return [{"text": "".join(words[i1:i2]), "same": tag == "equal"}
            for tag, i1, i2, _, _ in matcher.get_opcodes() if i2 > i1]


def dedup_pairs(run_dir: Path, limit: int = 10) -> list[dict]:
    """Removed duplicates next to the document each one duplicated, as read from stage 01 (before
    curation changed them), the words the two share marked."""
    pairs = []
    for s in removed_samples(run_dir):
        reason, detail = str(s.get("reason", "")), str(s.get("detail", ""))
        if reason == "exact_dedup.duplicate":
            pairs.append({"kind": "exact", "removed": s.get("id"), "kept": detail, "jaccard": 1.0, "source": s.get("source")})
        elif reason == "fuzzy_dedup.near_duplicate" and (m := _FUZZY.match(detail)):
            pairs.append({"kind": "near", "removed": s.get("id"), "kept": m["kept"], "jaccard": float(m["jaccard"]),
                          "source": s.get("source")})
    pairs = pairs[:limit]
    texts = _texts(run_dir / "01_data" / "shards", {p[k] for p in pairs for k in ("removed", "kept")})
    for p in pairs:
        removed, kept = texts.get(p["removed"], "")[:SHOWN_CHARS], texts.get(p["kept"], "")[:SHOWN_CHARS]
        p["removed_segments"] = _word_segments(removed, kept)
        p["kept_segments"] = _word_segments(kept, removed)
    return pairs


def placeholders(run_dir: Path) -> dict[str, str]:
    """The placeholder of each kind of personal data, as the run's configuration set them."""
    pii = ((read_yaml(run_dir / "config.yaml").get("curate") or {}).get("pii") or {})
    overrides = pii.get("placeholders") if isinstance(pii, dict) else None
    return {**PLACEHOLDERS, **(overrides if isinstance(overrides, dict) else {})}


def redaction_examples(run_dir: Path, limit: int = 8, per_document: int = 3) -> list[dict]:
    """Curated documents in which personal data was replaced: around each of the first few
    placeholders, the text with the placeholder marked by its kind."""
    kinds = {text: kind for kind, text in placeholders(run_dir).items() if text}
    if not kinds:
        return []
    pattern = re.compile("|".join(re.escape(t) for t in sorted(kinds, key=len, reverse=True)))
    folder = run_dir / "02_curate" / "shards"
    examples: list[dict] = []
    if not folder.is_dir():
        return examples
    for doc in read_shards(shard_paths(folder)):
        hits = list(pattern.finditer(doc.text))[:per_document]
        if not hits:
            continue
        snippets = []
        for m in hits:
            start, end = max(0, m.start() - CONTEXT_CHARS), min(len(doc.text), m.end() + CONTEXT_CHARS)
            window = doc.text[start:end]
            segments, last = [], 0
            for w in pattern.finditer(window):
                if w.start() > last:
                    segments.append({"text": window[last:w.start()], "pii": None})
                segments.append({"text": w.group(), "pii": kinds[w.group()]})
                last = w.end()
            if last < len(window):
                segments.append({"text": window[last:], "pii": None})
            snippets.append(segments)
        examples.append({"id": doc.id, "source": doc.source, "snippets": snippets,
                         "redactions": len(pattern.findall(doc.text))})
        if len(examples) >= limit:
            break
    return examples
