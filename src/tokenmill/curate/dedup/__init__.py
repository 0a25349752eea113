"""Deduplication over the whole corpus: exact copies (`exact.py`) and near-duplicates (MinHash LSH, `minhash.py`).

Both run as a map over shards that spills records partitioned by hash to files, then a map
over partitions that groups them, so no process ever holds the whole corpus's hashes. The
copy kept is always the first in corpus order (shard index, line), whatever the executor.
"""
