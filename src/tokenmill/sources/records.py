"""A document's `meta` from the other fields of a record (a JSON line, a Parquet or dataset row).

Shards are JSON written as UTF-8, so every value is made JSON-safe: dates become ISO strings,
lone surrogates (from a JSON escape) are replaced, and what JSON cannot hold is dropped.
"""

from __future__ import annotations

import datetime
from typing import Any

from tokenmill.sources.base import replace_surrogates

# Nested dicts merged into a document's meta, so that re-read output keeps its metadata flat.
_NESTED_META_KEYS = ("meta", "metadata")


def _json_safe(value: Any) -> tuple[bool, Any]:
    """(ok, value) where value can go through `json.dumps`; dates become ISO strings.

    Parquet and datasets rows may hold bytes, decimals or images, which a JSONL shard cannot.
    """
    if isinstance(value, str):
        return True, replace_surrogates(value)
    if value is None or isinstance(value, (bool, int, float)):
        return True, value
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date subclass
        return True, value.isoformat()
    if isinstance(value, (list, tuple)):
        items = [_json_safe(v) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if isinstance(value, dict):
        pairs = [(k, _json_safe(v)) for k, v in value.items()]
        ok = all(isinstance(k, str) and okv for k, (okv, _) in pairs)
        return ok, {replace_surrogates(k): v for k, (_, v) in pairs} if ok else None
    return False, None


def _put_safe(meta: dict[str, Any], key: Any, value: Any) -> None:
    ok, safe = _json_safe(value)
    if ok and isinstance(key, str):
        meta[replace_surrogates(key)] = safe


def record_meta(record: dict[str, Any], text_key: str, location: str) -> dict[str, Any]:
    """A document's meta from the other fields of its record.

    A nested "meta"/"metadata" dict is merged in first, so the record's own top-level fields win
    a clash; the record's "id" is kept as "orig_id" because `Document.id` is ours. Values that
    are not JSON-serialisable are dropped. `location` is always set, and always ours.
    """
    meta: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in record.items():
        if key == text_key:
            continue
        if key in _NESTED_META_KEYS and isinstance(value, dict):
            for k, v in value.items():
                _put_safe(meta, k, v)
        else:
            rest["orig_id" if key == "id" else key] = value
    for key, value in rest.items():
        _put_safe(meta, key, value)
    meta["location"] = location
    return meta


