"""The `tokenmill` command: one verb per stage, plus `run` for the whole pipeline.

Errors the user can fix (a wrong config, a missing input) print one message naming the key
or path and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenmill import __version__, compare
from tokenmill.align import cli as align_cli
from tokenmill.align import cli_rl as align_rl_cli
from tokenmill.cliargs import add_output, add_overrides
from tokenmill.deploy.quant import cli as quant_cli
from tokenmill.deploy.serve import cli as serve_cli
from tokenmill.errors import TokenmillError
from tokenmill.eval import cli as eval_cli
from tokenmill.explorer import cli as explorer_cli
from tokenmill.model import cli as model_cli
from tokenmill.pretrain import cli as pretrain_cli
from tokenmill.tokenizer import cli as tokenizer_cli

EPILOG = "Documentation: docs/ in the tokenmill repository. Every verb has its own --help."


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run the whole pipeline from a config, skipping stages that are up to date",
        description=(
            "Run every stage of the pipeline described by CONFIG into its run folder (runs/NAME by "
            "default). A stage whose settings and inputs are unchanged since it last finished is "
            "skipped; a changed stage re-runs, and so do the stages after it whose inputs changed. "
            "An interrupted run resumes at the first stage that is not done."
        ),
    )
    p.add_argument("config", metavar="CONFIG",
                   help="a YAML file, or the name of a config shipped with tokenmill (quickstart, gpt2-small)")
    add_overrides(p, "override a config value, e.g. --set data.sources.0.max_bytes=8000000 (repeatable)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE",
                   help="re-run from this stage on (name, number or section: 01_data, 01, data)")
    p.add_argument("--to", dest="to_stage", metavar="STAGE", help="stop after this stage")
    p.add_argument("--run-dir", metavar="DIR", help="run folder (default: runs/NAME)")
    p.add_argument("--print-config", action="store_true",
                   help="print CONFIG's YAML as written and exit, e.g. to copy a shipped config and edit it: "
                        "tokenmill run quickstart --print-config > my.yaml")
    p.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from tokenmill.config import load_config, read_config_text

    if args.print_config:
        if args.overrides or args.run_dir:
            raise TokenmillError("--print-config prints CONFIG as written; --set and --run-dir do not apply to it")
        print(read_config_text(args.config)[0], end="")
        return 0
    from tokenmill.run import run_pipeline

    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    config = load_config(args.config, overrides)
    run = run_pipeline(config, from_stage=args.from_stage, to_stage=args.to_stage)
    print(f"run folder: {run.root}  (manifest: {run.manifest_path})")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="read raw text from files, datasets or the built-in corpus into document shards",
        description=(
            "Read documents from the sources in CONFIG's data section and/or from --input paths "
            "and --source local, tag each with its domain, and write them into DIR as a small run "
            "folder: DIR/01_data/shards/*.jsonl.zst with DIR/01_data/stats.json (documents and "
            "bytes per domain, and every skipped or repaired input with its reason and location). "
            "Formats by extension: .jsonl[.gz|.zst], .parquet, .warc[.gz]/.wet[.gz], a folder saved "
            "by datasets.save_to_disk, any other folder or file as text (code tagged with its "
            "language, HTML reduced to its main text). Re-running with the same inputs skips the "
            "work; an interrupted run resumes."
        ),
    )
    p.add_argument("config", metavar="CONFIG", nargs="?", help="optional YAML config (or shipped config name) whose data section is used")
    p.add_argument("--input", dest="inputs", action="append", default=[], metavar="PATH",
                   help="a file, folder or glob to read (repeatable)")
    p.add_argument("--source", dest="builtin", action="append", default=[], choices=["local"],
                   help="'local': the built-in corpus gathered from this machine (see docs/builtin-corpus.md)")
    p.add_argument("--domain", metavar="NAME", help="domain tag for the --input paths (default: by format)")
    p.add_argument("--max-bytes", type=int, metavar="N", help="size cap of the built-in corpus in bytes")
    add_overrides(p, "override a config value, e.g. --set data.shard_bytes=32000000")
    add_output(p)
    p.set_defaults(func=_cmd_data)


def _cmd_data(args: argparse.Namespace) -> int:
    from tokenmill.config import load_config
    from tokenmill.run import DATA_STAGES, run_pipeline
    from tokenmill.runfolder import MANIFEST
    from tokenmill.sources.local import LocalCorpusSource
    from tokenmill.sources.registry import source_for_path

    config = load_config(args.config, args.overrides)
    sources = list(config.data.sources) if args.config else []
    sources += [source_for_path(path, args.domain) for path in args.inputs]
    for _ in args.builtin:
        sources.append(LocalCorpusSource(**({"max_bytes": args.max_bytes} if args.max_bytes else {})))
    if not sources:
        raise TokenmillError("nothing to read: give --input PATH, --source local, or a CONFIG with a data section")
    output = Path(args.output)
    if output.exists() and any(output.iterdir()) and not (output / MANIFEST).exists():
        # Stage folders in the output are replaced; never write into a folder tokenmill did not make.
        raise TokenmillError(f"--output {output} exists and is not a tokenmill data folder; choose an empty or new folder")
    config = config.model_copy(update={"run_dir": str(output), "data": config.data.model_copy(update={"sources": sources})})
    run_pipeline(config, to_stage=DATA_STAGES[-1])
    print(f"documents in {output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenmill",
        description="tokenmill: from raw text to a served language model. Each verb is one stage.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"tokenmill {__version__}")
    sub = parser.add_subparsers(title="verbs", metavar="VERB", required=True)
    _add_run(sub)
    _add_data(sub)
    tokenizer_cli.register(sub)
    model_cli.register(sub)
    pretrain_cli.register(sub)
    align_cli.register(sub)
    align_rl_cli.register(sub)
    quant_cli.register(sub)
    serve_cli.register(sub)
    explorer_cli.register(sub)
    eval_cli.register(sub)
    compare.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TokenmillError as e:
        print(f"tokenmill: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        # Permission denied, disk full, ...: the message names the path.
        print(f"tokenmill: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tokenmill: interrupted", file=sys.stderr)
        return 130
