"""Stage 08, serving: a paged KV cache, continuous batching and an OpenAI-compatible server.

    block_manager.py  blocks of the KV-cache pool, block tables, prefix sharing, copy-on-write
    scheduler.py      which sequences run in each step: continuous batching, chunked prefill, preemption
    runner.py         one forward pass over the batch, keys and values read and written through block tables
    sequence.py       a request's sequences, their incremental text and stop conditions
    engine.py         Engine (step by step) and AsyncEngine (a thread of its own, fed from asyncio)
    protocol.py       the OpenAI request bodies, read strictly and bounded; Limits
    guard.py          Host allow-list, API key, JSON-only POSTs: before any route (the explorer's too)
    generation.py     one API request through the engine: admission (429), deadline, cleanup
    api_error.py      the OpenAI error body
    server.py         the FastAPI app: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics
    cli.py            `tokenmill serve MODEL_DIR`

The sampling parameters and the sampler are the model package's (tokenmill.model.sampling).

Nothing here is imported by `import tokenmill.deploy.serve`: torch and FastAPI load on use.
"""
