"""The Gopher, C4 and FineWeb filters and PII redaction against datatrove's implementations of
the same rules: documents per second of each on the same documents, and the share of documents
on which the two decide alike (keep or drop); then the five in a chain (Gopher repetition,
Gopher quality, C4, FineWeb, PII), where tokenmill's filters share each document's split into
lines and tokens. Prints one JSON line.

    python benchmarks/heuristic_filters.py [--shards /tmp/tm_local/shards] [--domain web]

Times are CPU seconds of this process. datatrove (with spaCy, which it uses to split English
words) is a peer here, not a dependency of tokenmill. C4 runs with `unwrap_lines=False`, as
datatrove's reads line by line; the other differences are the deliberate ones the modules
describe, and show in the agreement figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tokenmill.curate.block import BlockStats
from tokenmill.curate.filters.c4 import C4Filter
from tokenmill.curate.filters.fineweb import FineWebFilter
from tokenmill.curate.filters.gopher import GopherQualityFilter, GopherRepetitionFilter
from tokenmill.curate.pii import PIIRedactor
from tokenmill.shards import read_shards, shard_paths


def main() -> None:
    import datatrove.pipeline.filters as peer
    from datatrove.data import Document as PeerDocument
    from datatrove.pipeline.formatters import PIIFormatter

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=Path, help="folder of document shards (default: the built-in corpus, made here)")
    ap.add_argument("--domain", default="web", help="only documents of this domain ('all' for every one)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.shards:
            paths = shard_paths(args.shards)
        else:
            from tokenmill.sources.collect import collect
            from tokenmill.sources.local import LocalCorpusSource

            collect([LocalCorpusSource()], Path(tmp))
            paths = shard_paths(Path(tmp) / "shards")
        docs = [d for d in read_shards(paths) if args.domain in ("all", d.source)]

    pairs = [
        (GopherRepetitionFilter(domains=None), peer.GopherRepetitionFilter()),
        (GopherQualityFilter(domains=None), peer.GopherQualityFilter()),
        (C4Filter(domains=None, unwrap_lines=False), peer.C4QualityFilter()),
        (FineWebFilter(domains=None), peer.FineWebQualityFilter()),
    ]
    peer.GopherQualityFilter().filter(PeerDocument(text="Load spaCy before the clock starts.", id="warm-up"))
    result = {"benchmark": "heuristic_filters", "domain": args.domain, "docs": len(docs),
              "mb": round(sum(len(d.text.encode()) for d in docs) / 1e6, 2), "filters": {}}
    for ours, theirs in pairs:
        print(f"benchmark {ours.name} ...", file=sys.stderr)
        stats = BlockStats(ours.name)
        start = time.process_time()
        kept = [ours.apply(d, stats) is not None for d in docs]
        ours_s = time.process_time() - start
        start = time.process_time()
        peer_kept = [theirs.filter(PeerDocument(text=d.text, id=d.id)) is True for d in docs]
        peer_s = time.process_time() - start
        result["filters"][ours.name] = {
            "docs_per_s": round(len(docs) / ours_s, 1),
            "datatrove_docs_per_s": round(len(docs) / peer_s, 1),
            "speedup": round(peer_s / ours_s, 2),
            "kept": sum(kept),
            "datatrove_kept": sum(peer_kept),
            "agreement": round(sum(a == b for a, b in zip(kept, peer_kept)) / max(len(docs), 1), 4),
        }
    # PII: tokenmill's regular-expression types (the defaults) against datatrove's formatter
    # (emails and IP addresses); a redactor keeps every document, so there is no agreement.
    ours_pii, peer_pii = PIIRedactor(), PIIFormatter()
    stats = BlockStats(ours_pii.name)
    start = time.process_time()
    for d in docs:
        ours_pii.apply(d, stats)
    ours_s = time.process_time() - start
    start = time.process_time()
    for d in docs:
        peer_pii.format(d.text)
    peer_s = time.process_time() - start
    result["filters"]["pii"] = {"docs_per_s": round(len(docs) / ours_s, 1),
                                "datatrove_docs_per_s": round(len(docs) / peer_s, 1),
                                "speedup": round(peer_s / ours_s, 2)}

    print("benchmark chain ...", file=sys.stderr)
    ours_chain = [ours for ours, _ in pairs] + [ours_pii]
    peer_chain = [theirs for _, theirs in pairs]
    stats = BlockStats("chain")
    kept, peer_kept = [], []
    start = time.process_time()
    for d in docs:
        for block in ours_chain:
            d = block.apply(d, stats)
            if d is None:
                break
        kept.append(d is not None)
    ours_s = time.process_time() - start
    start = time.process_time()
    for d in docs:
        doc = PeerDocument(text=d.text, id=d.id)
        ok = all(f.filter(doc) is True for f in peer_chain)  # stops at the first that removes it
        if ok:
            doc.text = peer_pii.format(doc.text)
        peer_kept.append(ok)
    peer_s = time.process_time() - start
    result["chain"] = {
        "mb_per_s": round(result["mb"] / ours_s, 3),
        "datatrove_mb_per_s": round(result["mb"] / peer_s, 3),
        "speedup": round(peer_s / ours_s, 2),
        "kept": sum(kept),
        "datatrove_kept": sum(peer_kept),
        "agreement": round(sum(a == b for a, b in zip(kept, peer_kept)) / max(len(docs), 1), 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
