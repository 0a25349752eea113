"""Our n-gram LM against KenLM: training speed, and scoring speed on the same model and documents.

    tokenmill data --source local --output /tmp/tm_local
    python benchmarks/ngram_lm.py /tmp/tm_local/shards

Trains the perplexity filter's default LM (order 5) on one domain ("reference" by default),
writes it as an ARPA file, loads that in KenLM, and scores every prose document both ways.
Tokenising (CCNet normalisation, words and marks, paragraphs) is shared: it is timed once and
added to both scorers for the end-to-end figures. Also reported: the largest difference of a
document's total log10 probability between the two, KenLM's per-token scores summed in float64
(`Model.score` sums in float32, which drifts by up to ~1 on a document of 100k tokens). Times
are CPU seconds of this process. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tokenmill.curate.ngram import NGramLM, paragraphs
from tokenmill.shards import read_shards, shard_paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shards", type=Path, help="folder of document shards")
    ap.add_argument("--train-domain", default="reference")
    ap.add_argument("--order", type=int, default=5)
    args = ap.parse_args()
    import kenlm

    docs = [d for d in read_shards(shard_paths(args.shards)) if d.source != "code"]
    t = time.process_time()
    tokenized = [paragraphs(d.text) for d in docs]
    tokenize_s = time.process_time() - t
    train = [p for d, ps in zip(docs, tokenized) if d.source == args.train_domain for p in ps]

    t = time.process_time()
    lm = NGramLM.train(train, order=args.order)
    train_s = time.process_time() - t
    with tempfile.TemporaryDirectory() as tmp:
        arpa = Path(tmp) / "lm.arpa"
        lm.write_arpa(arpa)
        peer = kenlm.Model(str(arpa))

    scored = [ps for ps in tokenized if ps]
    t = time.process_time()
    ours = [lm.score_sentences(ps)[0] for ps in scored]
    ours_s = time.process_time() - t
    t = time.process_time()
    theirs = [sum(peer.score(" ".join(p), bos=True, eos=True) for p in ps) for ps in scored]
    kenlm_s = time.process_time() - t

    exact = [sum(float(p) for para in ps for p, _, _ in peer.full_scores(" ".join(para))) for ps in scored]
    mb = sum(len(d.text.encode()) for d in docs) / 1e6
    n = len(scored)
    print(json.dumps({
        "docs": n,
        "mb": round(mb, 2),
        "train_tokens": sum(map(len, train)),
        "train_tokens_per_s": round(sum(map(len, train)) / train_s),
        "ngrams": lm.summary()["ngrams"],
        "tokenize_docs_per_s": round(n / tokenize_s, 1),
        "ours_score_docs_per_s": round(n / ours_s, 1),
        "kenlm_score_docs_per_s": round(n / kenlm_s, 1),
        "ours_end_to_end_docs_per_s": round(n / (tokenize_s + ours_s), 1),
        "kenlm_end_to_end_docs_per_s": round(n / (tokenize_s + kenlm_s), 1),
        "end_to_end_ratio_ours_over_kenlm": round((tokenize_s + kenlm_s) / (tokenize_s + ours_s), 3),
        "max_abs_diff_log10_per_doc": max(abs(a - b) for a, b in zip(ours, exact)),
        "max_abs_diff_log10_per_doc_kenlm_float32_sum": max(abs(a - b) for a, b in zip(ours, theirs)),
    }))


if __name__ == "__main__":
    main()
