"""PII redaction and toxicity filtering over a corpus: speed, what they find per domain, examples.

    tokenmill data --source local --output /tmp/tm_local
    python benchmarks/curate_pii_toxicity.py /tmp/tm_local/shards

prints one JSON line. Peers, on the same documents in the same run: datatrove's PIIFormatter
(e-mail and IP addresses only, so ours is timed with the same two types for the ratio), and
profanity_check's own `predict_prob` called once per document on the same windows. Times are
CPU seconds of this process, one document at a time, as a worker runs them.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from tokenmill.curate.block import BlockStats
from tokenmill.curate.pii import PIIRedactor
from tokenmill.curate.toxicity import ToxicityFilter, windows
from tokenmill.shards import read_shards, shard_paths
from tokenmill.sources.document import Document


def timed(fn, docs: list[Document]) -> tuple[float, list]:
    start = time.process_time()
    out = [fn(d) for d in docs]
    return time.process_time() - start, out


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds else float("inf")


def pii_report(docs: list[Document]) -> dict:
    block = PIIRedactor()
    block.find("warm up: a@b.com")  # the suffix list loads on the first '@'
    seconds, spans = timed(lambda d: block.find(d.text), docs)
    found: dict[str, Counter] = defaultdict(Counter)
    examples: dict[str, list[dict]] = defaultdict(list)  # per type, from different domains first
    for doc, doc_spans in zip(docs, spans):
        for start, end, kind in doc_spans:
            found[doc.source][kind] += 1
            if len(examples[kind]) < 3 and doc.source not in {e["source"] for e in examples[kind]}:
                a, b = max(0, start - 60), min(len(doc.text), end + 60)
                window = doc.text[a:b]
                after = block.redact(window, [(s - a, e - a, k) for s, e, k in doc_spans if a <= s and e <= b])
                examples[kind].append({"type": kind, "id": doc.id, "source": doc.source, "before": window, "after": after})
    # The whole block (find, redact, count) on every document.
    stats = BlockStats("pii")
    apply_seconds, _ = timed(lambda d: block.apply(d, stats), docs)

    peer = _datatrove_formatter()
    two = PIIRedactor(types=["email", "ip_address"])
    ours_two, _ = timed(lambda d: two.redact(d.text, two.find(d.text)), docs)
    report = {
        "docs_per_s": rate(len(docs), apply_seconds),
        "mb_per_s": round(sum(len(d.text.encode()) for d in docs) / apply_seconds / 1e6, 2),
        "find_seconds": round(seconds, 2),
        "found_by_domain": {domain: dict(sorted(c.items())) for domain, c in sorted(found.items())},
        "documents_with_pii": stats.counters["pii.documents"],
        "examples": [e for group in examples.values() for e in group],
        "email_ip_docs_per_s": rate(len(docs), ours_two),
    }
    if peer is not None:
        peer_seconds, _ = timed(lambda d: peer.format(d.text), docs)
        report["peer_datatrove_email_ip_docs_per_s"] = rate(len(docs), peer_seconds)
        report["ratio_vs_datatrove"] = round(peer_seconds / ours_two, 2)
    return report


def _datatrove_formatter():
    try:
        from datatrove.pipeline.formatters import PIIFormatter
    except ImportError:
        return None
    return PIIFormatter(email_replacement="<EMAIL>", ip_replacement="<IP_ADDRESS>")


def toxicity_report(docs: list[Document]) -> dict:
    block = ToxicityFilter()
    block.score("warm up")
    ours = [d for d in docs if block.applies_to(d)]
    stats = BlockStats("toxicity")
    for d in docs:
        stats.seen(d)
    seconds, kept = timed(lambda d: block.apply(Document(d.id, d.text, d.source, dict(d.meta)), stats), ours)
    scores = defaultdict(list)
    for d in ours:
        scores[d.source].append((block.score(d.text), d.id))
    removed = [d for d, k in zip(ours, kept) if k is None]
    report = {
        "threshold": block.threshold,
        "domains": block.domains,
        "docs_scored": len(ours),
        "docs_per_s": rate(len(ours), seconds),
        "mb_per_s": round(sum(len(d.text.encode()) for d in ours) / seconds / 1e6, 2),
        "removed_by_domain": dict(Counter(d.source for d in removed)),
        "removed_share_by_domain": stats.to_dict()["removed_share_by_domain"],
        "removed_examples": [{"id": d.id, "text": d.text[:200]} for d in removed[:3]],
        "score_quantiles_by_domain": {
            domain: dict(zip(("p50", "p99", "max"), np.round(np.quantile([s for s, _ in v], [0.5, 0.99, 1.0]), 3).tolist()))
            for domain, v in sorted(scores.items())
        },
        "highest_scored": {domain: max(v)[1] for domain, v in sorted(scores.items())},
    }
    from profanity_check import predict_prob

    peer_seconds, _ = timed(lambda d: predict_prob(windows(d.text, block.window_chars)), ours)
    report["peer_profanity_check_docs_per_s"] = rate(len(ours), peer_seconds)
    report["ratio_vs_profanity_check"] = round(peer_seconds / seconds, 2)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shards", type=Path, help="a folder of document shards")
    args = parser.parse_args()
    docs = list(read_shards(shard_paths(args.shards)))
    print(
        json.dumps(
            {
                "documents": len(docs),
                "by_domain": dict(sorted(Counter(d.source for d in docs).items())),
                "pii": pii_report(docs),
                "toxicity": toxicity_report(docs),
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main()
