"""The optimisation loop SFT, the reward model and DPO share.

Each method supplies its batches and a loss function returning (loss, figures); this loop
does the rest as pre-training does it — AdamW with decay on matrices only, warmup and cosine
learning rate (`tokenmill.pretrain.optim`, `.schedule`), clipping by the global gradient
norm — and logs one `metrics.jsonl` line per step (and to the trackers of `logging.backends`), with the held-out figures every
`eval_every` steps and at the end. A step whose gradient norm is not finite (NaN or ±inf) is
not applied: its line says `"skipped": true`.
"""

from __future__ import annotations

import math
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from tokenmill.align.config import TrainConfig
from tokenmill.align.packing import shard
from tokenmill.align.tracking import MetricsLog
from tokenmill.atomic import atomic_dir, write_text
from tokenmill.device import autocast, autocast_dtype
from tokenmill.errors import TokenmillError
from tokenmill.figures import line_chart
from tokenmill.model.io import load_model
from tokenmill.model.lora import apply_lora
from tokenmill.model.transformer import Transformer
from tokenmill.pretrain.distributed import init_data_parallel
from tokenmill.pretrain.optim import build_optimizer, clip_grads, decayed_names, grad_norm_squared, set_lr
from tokenmill.pretrain.schedule import lr_at
from tokenmill.tokenizer import Tokenizer

WEIGHTS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def load_for_training(config: TrainConfig, model_dir: Path) -> tuple[torch.device, Tokenizer, Transformer, int]:
    """What SFT, the reward model and DPO start from: the device, the seed set, the tokenizer and
    the model of `model_dir` in `config.dtype` (frozen, with low-rank adapters, under `config.lora`),
    and the sequence length (config.seq_len within the model's context)."""
    device = init_data_parallel(config.device).device
    torch.manual_seed(config.seed)
    model = load_model(model_dir, device=device, dtype=WEIGHTS_DTYPES[config.dtype])
    if config.lora is not None:
        apply_lora(model, **config.lora.model_dump())
    context = model.config.context_length
    return device, Tokenizer.load(model_dir), model, min(config.seq_len or context, context)


@contextmanager
def output_dir(out_dir: Path, config: TrainConfig) -> Iterator[Path]:
    """Where a method writes: `out_dir`, replaced whole when done (atomic_dir), by the first process;
    a scratch folder, dropped, by the others under torchrun (they train the same replica)."""
    d = init_data_parallel(config.device)
    if d.is_main:
        with atomic_dir(out_dir) as tmp:
            yield tmp
    else:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
    d.barrier()  # the folder is in place before any process reads it (the next method starts from it)


def amp(config: TrainConfig, device: torch.device):
    """The autocast context of the training precision (`config.precision`) on `device`."""
    return autocast(device, autocast_dtype(config.precision, device))


def held_out(
    model: nn.Module, evaluate: Callable[[], dict[str, float]], config: TrainConfig, device: torch.device
) -> dict[str, float]:
    """`evaluate()` as the training loop runs it: eval mode, no gradients, the training precision."""
    was_training = model.training
    model.eval()
    with torch.no_grad(), amp(config, device):
        figures = evaluate()
    model.train(was_training)
    return figures


def schedule(n_batches: int, steps: int, seed: int) -> list[int]:
    """Batch indices for `steps` steps: whole shuffled epochs, one after another."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < steps:
        epoch = list(range(n_batches))
        rng.shuffle(epoch)
        order += epoch
    return order[:steps]


def optimize(
    model: nn.Module,
    batches: Sequence,
    loss_fn: Callable[[object], tuple[torch.Tensor, dict[str, float]]],
    config: TrainConfig,
    evaluate: Callable[[], dict[str, float]],
    out_dir: Path,
    desc: str,
    paired: bool = False,
) -> list[dict]:
    """Train `model` (its parameters that require grad) on `batches`; return the metrics, also
    written to out_dir/metrics.jsonl as they come. Under torchrun each process takes its share of
    every batch (`shard`; `paired`: the batches hold preference pairs) and the gradients are summed
    over the processes before the step, so that every replica takes the step one process would."""
    device = next(model.parameters()).device
    d = init_data_parallel(config.device)
    if d.world > 1:
        smallest = min(b.input_ids.shape[0] // (2 if paired else 1) for b in batches)
        if smallest < d.world:
            raise TokenmillError(f"{desc}: a batch of {smallest} {'pairs' if paired else 'rows'} cannot be shared "
                                 f"by {d.world} processes; raise batch_size to at least {d.world}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = build_optimizer(named, decayed_names(model, config.decay_embeddings), config, device)
    # fp16's narrow range underflows small gradients: scale the loss up, the gradients back down.
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype(config.precision, device) == torch.float16 else None
    order = schedule(len(batches), config.total_steps(len(batches)), config.seed)
    metrics: list[dict] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    log = MetricsLog(out_dir, config.logging.backends if d.is_main else [], prefix=desc)
    start = time.perf_counter()
    model.train()
    try:
        for step, index in enumerate(tqdm(order, desc=desc, unit="step", leave=False, disable=not d.is_main), 1):
            lr = lr_at(step - 1, config, len(order))
            set_lr(optimizer, lr)
            batch, share = shard(batches[index], d.rank, d.world, paired) if d.world > 1 else (batches[index], 1.0)
            with amp(config, device):
                loss, figures = loss_fn(batch)
            if d.world > 1:
                loss = loss * share
            (scaler.scale(loss) if scaler is not None else loss).backward()
            if d.world > 1:
                for p in params:
                    if p.grad is not None:
                        d.all_reduce(p.grad)
                # The figures of the whole batch: each process's, weighed by its share, summed.
                shared = d.all_reduce(torch.tensor([loss.item(), *(share * v for v in figures.values())], dtype=torch.float64))
                loss, figures = shared[0], dict(zip(figures, shared[1:].tolist()))
            if scaler is not None:
                scaler.unscale_(optimizer)
            norm = float(grad_norm_squared(params).sqrt())
            # One NaN gradient would make every weight and both AdamW moments NaN for good: drop the step.
            # Under fp16 an overflow is the loss scaler's to handle: it skips the step and shrinks the scale.
            skipped = not math.isfinite(norm)
            if config.grad_clip is not None and not skipped:
                clip_grads(params, config.grad_clip, norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            elif skipped:
                tqdm.write(f"{desc} step {step}: gradient norm {norm}, step not applied", file=sys.stderr)
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            record = {"step": step, "loss": loss.item(), "lr": lr, "grad_norm": norm, **figures}
            if skipped:
                record["skipped"] = True
            if d.world > 1:
                record["processes"] = d.world
            if step % config.eval_every == 0 or step == len(order):
                record.update(held_out(model, evaluate, config, device))
            record["elapsed_s"] = round(time.perf_counter() - start, 3)
            metrics.append(record)
            log.write(record)
    finally:
        log.close()
        model.eval()
    return metrics


def write_charts(out_dir: Path, title: str, metrics: list[dict], charts: dict[str, tuple[list[str], str]]) -> list[str]:
    """One SVG line chart per entry {file stem: ([metric keys], y-axis label with its unit)}, against
    the step; an `eval_` key is named as held-out."""
    written = []
    for stem, (keys, ylabel) in charts.items():
        series = [(k.replace("eval_", "held-out ").replace("_", " "), [(m["step"], m[k]) for m in metrics if k in m])
                  for k in keys]
        series = [s for s in series if s[1]]
        if series:
            write_text(out_dir / f"{stem}.svg", line_chart(f"{title}: {stem.replace('_', ' ')}", series, "step", ylabel))
            written.append(f"{stem}.svg")
    return written
