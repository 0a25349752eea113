"""Stage 01 proper: read every configured source into document shards, with counts per domain."""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from tokenmill.atomic import write_json, write_text
from tokenmill.figures import bar_chart, human_bytes
from tokenmill.shards import ShardWriter
from tokenmill.sources.base import SourceConfig
from tokenmill.sources.document import SkipLog


def collect(sources: list[SourceConfig], out_dir: str | Path, shard_bytes: int = 64_000_000) -> dict[str, Any]:
    """Read `sources` in order into `out_dir/shards/`; write `stats.json` and `domains.svg`.

    Returns the stats: documents and UTF-8 bytes per domain and per source, and every skip and
    repair with its reason and where it happened.
    """
    out_dir = Path(out_dir)
    skips = SkipLog()
    by_domain: dict[str, dict[str, int]] = defaultdict(lambda: {"documents": 0, "bytes": 0})
    by_source: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    start = time.perf_counter()
    with ShardWriter(out_dir / "shards", shard_bytes=shard_bytes) as writer:
        for index, source in enumerate(sources):
            name = f"{index}:{source.describe()}"
            counts = {"source": name, "documents": 0, "bytes": 0}
            bar = tqdm(desc=f"read {name}", unit=" docs", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
            for doc in source.documents(skips):
                if doc.id in seen_ids:
                    # Two inputs that yield one id (the same file named twice) would make every
                    # later stage ambiguous; the first copy wins.
                    skips.skip("duplicate_id", doc.meta.get("location", doc.id))
                    continue
                seen_ids.add(doc.id)
                size = len(doc.text.encode("utf-8"))
                writer.write(doc)
                counts["documents"] += 1
                counts["bytes"] += size
                by_domain[doc.source]["documents"] += 1
                by_domain[doc.source]["bytes"] += size
                bar.update(1)
                bar.set_postfix_str(human_bytes(counts["bytes"]), refresh=False)
            bar.close()
            by_source.append(counts)
        shards = writer.close()
    seconds = time.perf_counter() - start
    total_docs = sum(d["documents"] for d in by_domain.values())
    total_bytes = sum(d["bytes"] for d in by_domain.values())
    stats = {
        "documents": total_docs,
        "bytes": total_bytes,
        "seconds": round(seconds, 2),
        "mb_per_second": round(total_bytes / 1e6 / seconds, 2) if seconds > 0 else None,
        "domains": dict(sorted(by_domain.items())),
        "sources": by_source,
        "shards": [p.name for p in shards],
        **skips.summary(),
    }
    write_json(out_dir / "stats.json", stats)
    rows = [(d, v["bytes"], f"{human_bytes(v['bytes'])}, {v['documents']:,} docs") for d, v in stats["domains"].items()]
    write_text(out_dir / "domains.svg", bar_chart("Raw text per domain", rows, "bytes", human_bytes))
    print_stats(stats)
    skips.print_summary()
    return stats


def print_stats(stats: dict[str, Any], out=sys.stderr) -> None:
    print(f"{'domain':<12} {'documents':>10} {'bytes':>12}", file=out)
    for domain, v in stats["domains"].items():
        print(f"{domain:<12} {v['documents']:>10,} {v['bytes']:>12,}", file=out)
    print(f"{'total':<12} {stats['documents']:>10,} {stats['bytes']:>12,}  ({stats['seconds']} s)", file=out)
