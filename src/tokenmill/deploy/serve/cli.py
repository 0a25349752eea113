"""The `tokenmill serve` verb: a model folder behind an OpenAI-compatible API."""

from __future__ import annotations

import argparse
from pathlib import Path

from tokenmill.cliargs import add_listen, bound_hosts
from tokenmill.device import DTYPE_NAMES, dtype_named
from tokenmill.errors import TokenmillError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a model folder behind an OpenAI-compatible API (paged KV cache, continuous batching)",
        description=(
            "Serve MODEL_DIR (a self-contained model folder: model.json, model.safetensors and the "
            "tokenizer files) over HTTP with the OpenAI API: /v1/models, /v1/completions, "
            "/v1/chat/completions (streaming as server-sent events), plus /health and /metrics "
            "(Prometheus). One engine thread owns the model and a paged KV cache and batches "
            "requests continuously. Binds to 127.0.0.1 unless --host says otherwise, and answers only "
            "requests whose Host header names this machine's loopback, the --host address or an --allowed-host."
        ),
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="model folder, e.g. runs/demo/05_pretrain/model")
    add_listen(p, "TOKENMILL_API_KEY", "require 'Authorization: Bearer KEY' on every route but /health "
               "(default: $TOKENMILL_API_KEY, else none)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model's name in the API (default: the folder's name)")
    p.add_argument("--tokenizer", metavar="DIR", help="tokenizer folder, when MODEL_DIR holds no tokenizer")
    p.add_argument("--run-dir", metavar="DIR",
                   help="also serve the explorer of this run folder at /explorer (see `tokenmill explore`), "
                   "behind the same API key when there is one")
    p.add_argument("--device", help="auto, cuda, cuda:1 or cpu (default auto: CUDA when present)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, help="weights and KV cache dtype (default: as stored)")
    engine = p.add_argument_group("engine")
    engine.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block (default 16)")
    engine.add_argument("--kv-cache-mb", type=int, metavar="MB",
                        help="memory for the KV cache (default: room for --max-num-seqs full-context sequences)")
    engine.add_argument("--max-num-seqs", type=int, default=64, help="sequences in a batch at most (default 64)")
    engine.add_argument("--max-num-batched-tokens", type=int, default=1024,
                        help="tokens per step at most, the chunk size of long prompts (default 1024)")
    engine.add_argument("--no-prefix-caching", action="store_true", help="do not share KV blocks between prompts")
    limits = p.add_argument_group("limits (each refused with a 4xx)")
    limits.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body size (default 1 MiB)")
    limits.add_argument("--max-prompt-tokens", type=int, help="prompt length (default: the context length - 1)")
    limits.add_argument("--max-tokens", type=int, help="max_tokens of a request (default: the context length)")
    limits.add_argument("--max-n", type=int, default=8, help="n of a request (default 8, at most 128)")
    limits.add_argument("--max-seqs-per-request", type=int, default=64,
                        help="prompts × n of one request (default 64)")
    overload = p.add_argument_group("overload (each answered 429 with Retry-After, or 408 for the timeout)")
    overload.add_argument("--max-queued-requests", type=int, default=256,
                          help="generation requests accepted and not finished, running or waiting (default 256)")
    overload.add_argument("--max-queued-tokens", type=int,
                          help="tokens those requests may hold in the KV cache, prompts + n × max_tokens "
                          "(default: four times the KV cache)")
    overload.add_argument("--request-timeout", type=float, default=600.0, metavar="SECONDS",
                          help="from a request's arrival to its last token (default 600; 0: no limit)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tokenmill.deploy.serve.engine import EngineConfig
    from tokenmill.deploy.serve.loading import load_engine
    from tokenmill.deploy.serve.server import Limits, create_app

    model_dir = Path(args.model_dir)
    try:
        limits = Limits(args.max_body_bytes, args.max_prompt_tokens, args.max_tokens, args.max_n,
                        args.max_seqs_per_request, args.max_queued_requests, args.max_queued_tokens,
                        args.request_timeout or None)
    except ValueError as e:
        raise TokenmillError(str(e)) from None
    config = EngineConfig(
        block_size=args.block_size,
        kv_cache_bytes=args.kv_cache_mb * 2**20 if args.kv_cache_mb else None,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        prefix_caching=not args.no_prefix_caching,
    )
    engine = load_engine(model_dir, config, Path(args.tokenizer) if args.tokenizer else None, args.device,
                         dtype_named(args.dtype) if args.dtype else None)
    app = create_app(engine, args.served_model_name or model_dir.resolve().name, args.api_key, limits,
                     bound_hosts(args.host, args.allowed_host))
    if args.run_dir:
        from tokenmill.explorer.app import mount_explorer

        mount_explorer(app, Path(args.run_dir), path="/explorer")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
