"""The verbs of stages 04 and 07: `model`, `plan`, `inspect`, `convert`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from tokenmill.cliargs import add_output, add_overrides
from tokenmill.errors import TokenmillError
from tokenmill.model.config import describe_validation_error
from tokenmill.model.hf_families import FAMILIES
from tokenmill.model.section import ModelSection


def _add_model_source(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", metavar="NAME", help="a built-in architecture (e.g. llama-7b, tiny-gpt2); an unknown name lists them")
    source.add_argument("--config", metavar="MODEL_JSON", help="a model.json file or a model folder")
    add_overrides(p, "override a model.json field, e.g. --set n_layers=4 (repeatable)", "FIELD=VALUE")


def _section(args: argparse.Namespace) -> ModelSection:
    from tokenmill.overrides import parse_override

    fields = {}
    for item in args.overrides:
        keys, value = parse_override(item)
        if len(keys) != 1 or keys[0] == "preset":
            raise TokenmillError(f"--set {item}: expected a model.json field (use --preset/--config for the preset)")
        fields[keys[0]] = value
    try:
        return ModelSection(preset=args.preset or args.config, **fields)
    except ValidationError as e:
        raise TokenmillError(describe_validation_error(e, "(--set)")) from None


def add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model",
        help="write a model.json and its parameter and FLOP breakdown (stage 04)",
        description=(
            "Resolve an architecture from a preset or a model.json plus --set overrides, validate it, and write "
            "model.json, params.json (parameters per role, FLOPs per token, training and serving memory) and "
            "params.svg into DIR. No weights are made: pre-training does that."
        ),
    )
    _add_model_source(p)
    p.add_argument("--vocab-size", type=int, metavar="N", help="the tokenizer's vocabulary size (replaces the preset's)")
    add_output(p)
    p.set_defaults(func=_cmd_model)


def _cmd_model(args: argparse.Namespace) -> int:
    from tokenmill.model.anatomy import format_breakdown, tensor_rows
    from tokenmill.model.config import read_config
    from tokenmill.model.stage import build_model_stage

    metrics = build_model_stage(_section(args), args.vocab_size, args.output)
    print(format_breakdown(tensor_rows(read_config(Path(args.output) / "model.json"))))
    print(f"\ntraining FLOPs per token {metrics['training_flops_per_token']:.3g}; wrote model.json, params.json, "
          f"params.svg -> {args.output}")
    return 0


def add_plan(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="count parameters and FLOPs, and the memory to train and to serve a model",
        description=(
            "For a preset or model.json: parameters (per role), FLOPs per token of training (6N + 12·L·H·Q·T), "
            "memory per GPU to train it at each precision (weights, gradients, fp32 master weights, AdamW "
            "moments, activations) under a data × tensor × pipeline parallel layout, and to serve it "
            "(weights at each precision, KV cache per token, per user and for --users users)."
        ),
    )
    _add_model_source(p)
    p.add_argument("--gpus", type=int, metavar="N", help="number of GPUs (default dp × tp × pp)")
    p.add_argument("--dp", type=int, metavar="N", help="data-parallel degree (default gpus / (tp × pp))")
    p.add_argument("--tp", type=int, default=1, metavar="N", help="tensor-parallel degree")
    p.add_argument("--pp", type=int, default=1, metavar="N", help="pipeline-parallel degree")
    p.add_argument("--fsdp", action="store_true", help="shard weights, gradients and optimizer state over dp")
    p.add_argument("--seq-len", type=int, metavar="T", help="tokens per sequence (default: the context length)")
    p.add_argument("--batch", type=int, default=1, metavar="B", help="sequences per data-parallel rank (training)")
    p.add_argument("--users", type=int, default=100, metavar="U", help="concurrent sequences to serve")
    p.add_argument("--gpu-memory", type=float, default=80.0, metavar="GB", help="memory of one GPU, to say what fits")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from tokenmill.model.plan import format_plan, make_layout, make_plan

    section = _section(args)
    config = section.resolve()
    layout = make_layout(config, args.gpus, args.dp, args.tp, args.pp, args.fsdp)
    plan = make_plan(config, section.preset, layout, args.seq_len, args.batch, args.users)
    print(json.dumps(plan, indent=2) if args.json else format_plan(plan, args.gpu_memory))
    return 0


def add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="what each tensor of a model is, attention patterns on a prompt, nearest tokens (stage 07)",
        description=(
            "MODEL is a model folder, a model.json or a preset name. Prints every tensor with its role "
            "(embedding, W_QKV, W_O, FFN W1/W2/W3, norm γ/β, head, position embedding), shape and share of the "
            "parameters, and the totals per role. For a folder with weights, --prompt saves the attention "
            "probabilities of every layer and head (attention.npz, attention.json, and an SVG heatmap of one "
            "head) and --nearest lists the tokens closest to one in embedding space (cosine)."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model folder, model.json or preset name")
    p.add_argument("--all", action="store_true", help="list the tensors of every layer, not layer 0's once")
    p.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT", help="text whose attention patterns to save (needs a tokenizer)")
    prompt.add_argument("--ids", metavar="I,J,...", help="token ids whose attention patterns to save")
    p.add_argument("--layer", type=int, default=0, help="layer of the heatmap (default 0)")
    p.add_argument("--head", type=int, default=0, help="head of the heatmap (default 0)")
    p.add_argument("--nearest", metavar="TOKEN", help="a token (or, without a tokenizer, an id) whose neighbours to list")
    p.add_argument("--top", type=int, default=10, metavar="K", help="how many neighbours (default 10)")
    p.add_argument("--out", metavar="DIR", default="inspect", help="where attention files go (default ./inspect)")
    p.set_defaults(func=_cmd_inspect)


def _model_config(target: str):
    from tokenmill.model.config import read_config
    from tokenmill.model.presets import load_preset

    path = Path(target)
    if path.is_dir() or path.suffix == ".json":
        return read_config(path)
    return load_preset(target)


def _token_id(token: str, tokenizer) -> int:
    if tokenizer is not None:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return found
        ids = tokenizer.encode(token, add_special_tokens=False).ids
        if len(ids) == 1:
            return ids[0]
    if token.isdigit():
        return int(token)
    raise TokenmillError(f"--nearest {token!r} is not one token of this tokenizer" if tokenizer else
                         f"--nearest {token!r}: the model folder has no tokenizer.json, give a token id")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from tokenmill.model.anatomy import format_breakdown, role_totals, tensor_rows

    config = _model_config(args.model)
    rows = tensor_rows(config)
    if args.json:
        print(json.dumps({"tensors": rows, "roles": role_totals(rows)}, indent=2, ensure_ascii=False))
    else:
        print(format_breakdown(rows, every_tensor=args.all))
    if args.prompt or args.ids or args.nearest:
        _inspect_weights(args, config)
    return 0


def _inspect_weights(args: argparse.Namespace, config) -> None:
    from tokenmill.model.anatomy import attention_patterns, load_tokenizer, nearest_tokens, save_attention, token_labels
    from tokenmill.model.io import load_model

    folder = Path(args.model)
    if not (folder.is_dir() and (folder / "model.safetensors").is_file()):
        raise TokenmillError(f"{args.model} has no weights: --prompt, --ids and --nearest need a model folder")
    model = load_model(folder)
    tokenizer = load_tokenizer(folder)
    if args.prompt or args.ids:
        if args.prompt:
            if tokenizer is None:
                raise TokenmillError(f"{folder} has no tokenizer.json: give --ids instead of --prompt")
            ids = tokenizer.encode(args.prompt).ids
        else:
            try:
                ids = [int(x) for x in args.ids.split(",")]
            except ValueError:
                raise TokenmillError(f"--ids {args.ids!r}: expected comma-separated integers") from None
        if not ids or len(ids) > config.context_length or not all(0 <= i < config.vocab_size for i in ids):
            raise TokenmillError(f"the prompt must be 1..{config.context_length} ids in 0..{config.vocab_size - 1}")
        if not (0 <= args.layer < config.n_layers and 0 <= args.head < config.n_heads):
            raise TokenmillError(f"--layer/--head outside {config.n_layers} layers × {config.n_heads} heads")
        written = save_attention(Path(args.out), attention_patterns(model, ids), token_labels(ids, tokenizer), ids,
                                 args.layer, args.head)
        print(f"\nattention of {len(ids)} tokens, {config.n_layers} layers × {config.n_heads} heads -> "
              + ", ".join(str(Path(args.out) / w) for w in written))
    if args.nearest:
        token_id = _token_id(args.nearest, tokenizer)
        try:
            neighbours = nearest_tokens(model, token_id, args.top)
        except ValueError as e:
            raise TokenmillError(str(e)) from None
        label = token_labels([token_id], tokenizer)[0]
        print(f"\nnearest to {label!r} (id {token_id}) by cosine similarity of embeddings:")
        for i, sim in neighbours:
            print(f"  {sim:+.4f}  {token_labels([i], tokenizer)[0]!r} (id {i})")


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert between a transformers checkpoint folder and a tokenmill model folder",
        description=(
            "--to tokenmill: read a Hugging Face transformers checkpoint (config.json and safetensors) of the "
            f"{', '.join(FAMILIES)} families into a tokenmill model folder (model.json, model.safetensors). SRC is "
            "a folder or a Hub id, org/name or org/name@revision, fetched through the Hugging Face cache (HF_HOME, "
            "HF_TOKEN and HF_HUB_OFFLINE apply; only the config, safetensors and tokenizer files are downloaded). "
            "--to hf: write a tokenmill model folder as the transformers family that expresses it exactly (or "
            "--family), loadable with AutoModelForCausalLM.from_pretrained. Tokenizer files are copied along."
        ),
    )
    p.add_argument("src", metavar="SRC", help="folder to read, or with --to tokenmill a Hub id org/name[@revision]")
    p.add_argument("dst", metavar="DST", help="folder to write (replaced as a whole)")
    p.add_argument("--to", required=True, choices=["tokenmill", "hf"], help="the format of DST")
    p.add_argument("--family", choices=list(FAMILIES), help="with --to hf: the transformers family to write")
    p.add_argument("--push", metavar="ORG/NAME", help="with --to hf: then upload DST to this Hub model repository "
                   "(created private if new; needs HF_TOKEN with write access, refused under HF_HUB_OFFLINE)")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    if Path(args.dst).resolve() == Path(args.src).resolve():
        raise TokenmillError("SRC and DST are the same folder")
    if args.to == "tokenmill":
        from tokenmill.model.hub import checkpoint_folder

        if args.family or args.push:
            raise TokenmillError("--family and --push apply to --to hf; importing reads the family from config.json")
        src = checkpoint_folder(args.src)  # before torch loads: a Hub error comes at once
        from tokenmill.model.hf import import_hf

        config = import_hf(src, args.dst)
        print(f"{args.src} -> {args.dst}: {config.n_layers} layers, d_model {config.d_model}, {config.attention_kind}, "
              f"{config.position} positions", file=sys.stderr)
    else:
        from tokenmill.model.hf import export_hf

        family = export_hf(args.src, args.dst, args.family)
        print(f"{args.src} -> {args.dst}: {family.architecture}", file=sys.stderr)
        if args.push:
            from tokenmill.model.hub import push

            print(f"pushed {args.dst} to {args.push}: {push(Path(args.dst), args.push)}", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    add_model(sub)
    add_plan(sub)
    add_inspect(sub)
    add_convert(sub)
