"""The `tokenmill explore` verb: the explorer over a run folder, beside the run's model served by the API."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path

from tokenmill.cliargs import add_listen, bound_hosts
from tokenmill.errors import TokenmillError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explore",
        help="open a run folder (or a model folder) in the browser: the pipeline as blocks, each with its artifacts",
        description=(
            "Serve a web page over RUN_DIR that draws the pipeline as eight blocks (data, curation, "
            "tokenizer, architecture, pre-training, alignment, model weights, deployment); a click opens "
            "the block's artifacts from this run: statistics, charts, removed examples, the tokenizer on "
            "your own text, attention maps on your own prompt. The run's latest model folder (quantized, "
            "else DPO, PPO, SFT, else pre-trained) is served beside it with the OpenAI API, so the page "
            "can chat with it and show the KV cache live. Reads only inside RUN_DIR; binds to 127.0.0.1 "
            "unless --host says otherwise, and another address needs --api-key. Given a model folder "
            "instead (one converted from the Hub, say), the page shows that model: its own tokenizer on your "
            "text, its architecture and parameters, attention on your prompt, and a chat with it."
        ),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/quickstart, or a model folder")
    add_listen(p, "TOKENMILL_EXPLORER_KEY", "require this key on every route (default: $TOKENMILL_EXPLORER_KEY, else "
               "none); needed to bind a --host other than loopback. A browser opens the page once as /?key=KEY and "
               "keeps a cookie; programs send 'Authorization: Bearer KEY'")
    p.add_argument("--model", metavar="KEY", choices=("quantized", "dpo", "ppo", "sft", "pretrained"),
                   help="which model folder to serve (default: the most downstream one the run has)")
    p.add_argument("--no-serve", action="store_true", help="only the page: serve no model (no chat, no engine)")
    p.add_argument("--device", help="cuda, cuda:1 or cpu for the served model (default: CUDA when present)")
    p.add_argument("--kv-cache-mb", type=int, metavar="MB", help="memory for the KV cache (default: 8 full-context sequences)")
    p.set_defaults(func=_cmd_explore)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, api_key: str | None) -> None:
    """The explorer shows the run's files, its models' attention and a chat with them: off this
    machine, only with a key."""
    if not is_loopback(host) and not api_key:
        raise TokenmillError(
            f"--host {host} would open the explorer (the run's files, its models, a chat) to other machines: "
            "give it a key with --api-key KEY (or $TOKENMILL_EXPLORER_KEY), or bind to 127.0.0.1"
        )


def build_app(run_dir: Path, model_key: str | None = None, serve: bool = True, device: str | None = None,
              kv_cache_mb: int | None = None, api_key: str | None = None, allowed_hosts: tuple[str, ...] = ()):
    """The explorer app over `run_dir`; with `serve`, mounted at "/" on the serving API of the
    run's model folder `model_key` (default: the latest, see stages.MODEL_FOLDERS). `run_dir` may
    also be a model folder, shown as a run of that one model (see model_view). It answers to
    loopback names and `allowed_hosts`; with `api_key` every route needs it."""
    from tokenmill.explorer.app import explorer_app, mount_explorer
    from tokenmill.explorer.model_view import open_model_folder, run_folder
    from tokenmill.explorer.stages import is_model_folder, latest_model, model_folder

    if not run_dir.is_dir():
        raise TokenmillError(f"run folder not found: {run_dir}")
    view = None
    if is_model_folder(run_dir):
        if model_key:
            raise TokenmillError(f"--model picks a model of a run folder; {run_dir} is a model folder, served as it is")
        view = open_model_folder(run_dir)  # kept alive by the app; removed at exit
        run_dir = run_folder(view)
    model_dir = (model_folder(run_dir, model_key) if model_key else latest_model(run_dir)) if serve else None
    if model_key and model_dir is None:
        raise TokenmillError(f"{run_dir} holds no '{model_key}' model folder")
    if model_dir is None:
        app = explorer_app(run_dir, api_key=api_key, allowed_hosts=allowed_hosts)
        app.state.model_view = view
        return app, None

    from tokenmill.deploy.serve.engine import EngineConfig
    from tokenmill.deploy.serve.loading import load_engine
    from tokenmill.deploy.serve.server import create_app

    config = EngineConfig(max_num_seqs=8, kv_cache_bytes=kv_cache_mb * 2**20 if kv_cache_mb else None)
    engine = load_engine(model_dir, config, device=device)
    name = run_dir.name if view else f"{run_dir.resolve().name}/{model_dir.relative_to(run_dir).as_posix()}"
    app = create_app(engine, name, api_key=api_key, allowed_hosts=allowed_hosts)
    app.state.model_view = view
    return mount_explorer(app, run_dir, path="/"), (model_dir.resolve() if view else model_dir)


def _cmd_explore(args: argparse.Namespace) -> int:
    import uvicorn

    check_exposure(args.host, args.api_key)
    run_dir = Path(args.run_dir)
    app, model_dir = build_app(run_dir, args.model, not args.no_serve, args.device, args.kv_cache_mb,
                               args.api_key, tuple(bound_hosts(args.host, args.allowed_host)))
    served = f"serving {model_dir} at /v1" if model_dir else "no model served"
    login = " (open it once as /?key=KEY: the browser then keeps a cookie)" if args.api_key else ""
    print(f"explorer of {run_dir} at http://{args.host}:{args.port}/{login} ({served})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
