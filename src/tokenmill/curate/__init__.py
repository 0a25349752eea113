"""Stage 02: curation blocks over a stream of documents, and the executors that run them over shards."""
