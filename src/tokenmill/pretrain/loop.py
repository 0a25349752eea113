"""The pre-training loop: next-token prediction on the token shards.

One step: the learning rate of the schedule; this rank's share of batch `position`, forward and
backward over its micro-batches (gradients accumulate, and are reduced across data-parallel
ranks after the last one); the mean loss and the global gradient norm, agreed by every rank
(the step's single host sync); the spike guard; clipping; the AdamW update. Every
`eval_every` steps the validation loss and a sample; every `checkpoint_every` steps the full
state. `metrics.jsonl` gets a line per step, `samples.jsonl` the samples, `events.jsonl` the
spikes and rollbacks; all three live beside the checkpoints, so a resumed run continues them.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from tokenmill.atomic import atomic_dir, write_json, write_text
from tokenmill.device import autocast, autocast_dtype
from tokenmill.errors import TokenmillError
from tokenmill.model.config import ModelConfig, read_config
from tokenmill.model.generate import fit_context, generate
from tokenmill.model.io import TIED, build_model, read_weights
from tokenmill.model.plan import flops_per_token, parameter_counts
from tokenmill.model.transformer import Transformer
from tokenmill.pretrain.checkpoint import Checkpointer, export_model
from tokenmill.pretrain.config import PretrainConfig
from tokenmill.pretrain.data import unigram_entropy, val_batch
from tokenmill.pretrain.distributed import Dist, init_distributed
from tokenmill.pretrain.guard import is_spike, remember, skip_range
from tokenmill.pretrain.optim import build_optimizer, clip_grads, decayed_names, grad_norm_squared, set_lr
from tokenmill.pretrain.parallelize import Parallel, parallelize
from tokenmill.pretrain.report import chinchilla, peak_flops, write_figures
from tokenmill.pretrain.schedule import lr_at
from tokenmill.pretrain.state import TrainState
from tokenmill.tokenizer.dataset import TokenDataset
from tokenmill.tokenizer.tokens import token_shard_paths

LOGS = ("metrics.jsonl", "samples.jsonl", "events.jsonl")


@dataclass(frozen=True)
class Batch:
    """How one optimizer step's tokens are laid out."""

    seq_len: int
    sequences: int  # per step, over all data-parallel ranks
    per_rank: int
    micro_batch: int
    accum: int  # micro-batches per step on each rank (pipeline micro-batches under pp)
    steps: int

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len


def plan_batch(config: PretrainConfig, model_config: ModelConfig, dp_size: int) -> Batch:
    seq_len = config.seq_len or model_config.context_length
    if seq_len > model_config.context_length:
        raise TokenmillError(f"pretrain.seq_len {seq_len} exceeds the model's context_length {model_config.context_length}")
    sequences = config.batch_tokens // seq_len
    unit = config.micro_batch * dp_size
    if config.batch_tokens % seq_len or sequences < unit or sequences % unit:
        raise TokenmillError(
            f"pretrain.batch_tokens {config.batch_tokens:,} is {sequences} sequences of {seq_len}, not a multiple of "
            f"micro_batch {config.micro_batch} × {dp_size} data-parallel rank(s); try batch_tokens "
            f"{max(1, round(sequences / unit)) * unit * seq_len:,}"
        )
    per_rank = sequences // dp_size
    if config.steps is not None:
        steps = config.steps
    elif config.tokens is not None:
        steps = math.ceil(config.tokens / (sequences * seq_len))
    else:
        steps = 1000
    return Batch(seq_len, sequences, per_rank, config.micro_batch, per_rank // config.micro_batch, steps)


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocations on a GPU, the process's peak resident size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class RunLog:
    """The JSON-lines logs of a run; rank 0 writes them. Lines past the step a run resumes (or
    rolls back) to are dropped, so each file reads as one uninterrupted run."""

    def __init__(self, folder: Path, enabled: bool) -> None:
        self.folder, self.enabled = folder, enabled
        if enabled:
            folder.mkdir(parents=True, exist_ok=True)

    def write(self, name: str, record: dict) -> None:
        if self.enabled:
            with open(self.folder / name, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def read(self, name: str) -> list[dict]:
        path = self.folder / name
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate(self, step: int, names: tuple[str, ...] = ("metrics.jsonl", "samples.jsonl")) -> None:
        if self.enabled:
            for name in names:
                kept = [r for r in self.read(name) if r["step"] <= step]
                write_text(self.folder / name, "".join(json.dumps(r) + "\n" for r in kept))


def train(
    model_config: ModelConfig,
    tokens_dir: Path,
    tokenizer_dir: Path | None,
    config: PretrainConfig,
    work_dir: Path,
    out_dir: Path,
    resume: bool,
    init_dir: Path | None = None,
) -> dict:
    """Pre-train a model of `model_config` on the token shards of `tokens_dir`; checkpoints and
    logs go to `work_dir`, the model folder, figures and report.json to `out_dir`. Under
    torchrun every process calls this; rank 0 writes the files. Returns the run's key metrics.
    With `init_dir` (a model folder of this architecture) training starts from its weights
    rather than a random init: continued pre-training of an imported or earlier model."""
    d = init_distributed(config)
    try:
        return Trainer(model_config, Path(tokens_dir), tokenizer_dir and Path(tokenizer_dir), config, d,
                       Path(work_dir), Path(out_dir), init_dir and Path(init_dir)).run(resume)
    finally:
        d.close()


def start_from(model: Transformer, folder: Path) -> None:
    """Copy the weights of the model folder `folder` into `model` (in the model's dtype)."""
    if read_config(folder) != model.config:
        raise TokenmillError(f"--init {folder}: its model.json differs from the architecture being trained")
    where, state = read_weights(folder, next(model.parameters()).device)
    missing = sorted(set(model.state_dict()) - set(state) - ({TIED} if model.config.tie_embeddings else set()))
    if missing or set(state) - set(model.state_dict()):
        raise TokenmillError(f"{where} does not match its model.json: missing {missing[:5] or 'nothing'}")
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name in state:
                t.copy_(state[name])
    model.tie_weights()


class Trainer:
    def __init__(
        self, model_config: ModelConfig, tokens_dir: Path, tokenizer_dir: Path | None, config: PretrainConfig,
        d: Dist, work_dir: Path, out_dir: Path, init_dir: Path | None = None,
    ) -> None:
        self.model_config, self.config, self.d = model_config, config, d
        self.tokens_dir, self.tokenizer_dir, self.work_dir, self.out_dir = tokens_dir, tokenizer_dir, work_dir, out_dir
        self.batch = plan_batch(config, model_config, d.dp_size)
        self.train_data = TokenDataset(tokens_dir, "train", self.batch.seq_len, config.seed)
        has_val = bool(token_shard_paths(tokens_dir, "val"))
        self.val_data = TokenDataset(tokens_dir, "val", self.batch.seq_len, config.seed) if has_val else None
        self.tokenizer = self._tokenizer()
        if d.device.type == "cuda":
            torch.set_float32_matmul_precision("high")  # TF32 for what autocast leaves in float32
        self.amp_dtype = autocast_dtype(config.precision, d.device)

        torch.manual_seed(config.seed)  # the same initial weights on every rank
        model = build_model(model_config, device=d.device)
        if init_dir is not None:
            start_from(model, init_dir)
        decayed = decayed_names(model, config.decay_embeddings)
        b = self.batch
        self.par: Parallel = parallelize(model, d, config, b.micro_batch, b.seq_len, b.accum, self.amp_dtype)
        torch.manual_seed(config.seed + 1 + d.dp_rank)  # dropout differs between data-parallel ranks
        self.optimizer = build_optimizer(self.par.params, decayed, config, d.device)
        self.scaler = torch.amp.GradScaler(d.device.type) if self.amp_dtype == torch.float16 else None
        self.ckpt = Checkpointer(work_dir / "checkpoints", d, self.par, self.optimizer, model_config, config.keep_last)
        self.log = RunLog(work_dir, d.is_main)
        counts = parameter_counts(model_config)
        self.params = counts["total"]
        self.flops_per_token = flops_per_token(model_config, counts, b.seq_len)["training"]
        self.peak = peak_flops(d.device, self.amp_dtype)

    def _tokenizer(self):
        if self.tokenizer_dir is None:
            return None
        from tokenmill.tokenizer import Tokenizer

        tok = Tokenizer.load(self.tokenizer_dir)
        if tok.vocab_size > self.model_config.vocab_size:
            raise TokenmillError(
                f"the tokenizer has {tok.vocab_size:,} tokens, the model's vocab_size is {self.model_config.vocab_size:,}"
            )
        if self.train_data.tokenizer_hash not in (None, tok.hash):
            raise TokenmillError(
                f"the token shards in {self.tokens_dir} were encoded with another tokenizer than {self.tokenizer_dir}"
            )
        return tok

    def amp(self):
        return autocast(self.d.device, self.amp_dtype)

    # --- the run ---------------------------------------------------------------------------------

    def run(self, resume: bool) -> dict:
        started = time.perf_counter()
        state = TrainState()
        latest = self.ckpt.latest() if resume else None
        if latest is not None:
            state = self._restore(latest)
        elif not resume:
            self.ckpt.clear()
        if latest is None:
            self.log.truncate(-1, LOGS)  # a fresh start
        else:
            self.log.truncate(state.step)
        steps = self.batch.steps
        if state.step == 0:
            self.log.write("metrics.jsonl", {"step": 0, **self.evaluate(0)})
        bar = tqdm(total=steps, initial=state.step, unit="step", desc="pretrain", disable=not self.d.is_main)
        while state.step < steps:
            state, record = self.step(state)
            if record is None:  # a spike: rolled back
                bar.n = state.step
                bar.refresh()
                continue
            if state.step % self.config.eval_every == 0 or state.step == steps:
                record.update(self.evaluate(state.step))
                line = f"step {state.step}: train {record['loss']:.4f}"
                if "val_loss" in record:
                    line += f", validation {record['val_loss']:.4f} (perplexity {record['val_ppl']:.1f})"
                bar.write(line, file=sys.stderr)
            self.log.write("metrics.jsonl", record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.2e}", tok_s=f"{record['tokens_per_s']:,.0f}")
            golden = self.config.golden_every is not None and state.step % self.config.golden_every == 0
            if state.step % self.config.checkpoint_every == 0 or state.step == steps or golden:
                self.ckpt.save(state, golden=golden)  # the last step always: the model folder is exported from it
        bar.close()
        return self.finish(state, time.perf_counter() - started)

    def _restore(self, path: Path) -> TrainState:
        state = self.ckpt.load(path)
        if self.scaler is not None and state.scaler is not None:
            self.scaler.load_state_dict(state.scaler)
        return state

    def step(self, state: TrainState) -> tuple[TrainState, dict | None]:
        b, d, config = self.batch, self.d, self.config
        start = time.perf_counter()
        lr = lr_at(state.step, config, b.steps)
        set_lr(self.optimizer, lr)
        position = state.next_position()
        x, y = self.train_data.batch(position, b.per_rank, d.dp_rank, d.dp_size, d.device)
        loss = self.par.forward_backward(x, y, b.accum, self.amp, self.scaler)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        loss, grad_norm = self._agree(loss, grad_norm_squared(self.par.norm_params()))
        # Under fp16 loss scaling an overflowing gradient is the scaler's to handle: it skips the step and lowers the scale.
        if is_spike(loss, state.recent_losses, config, grad_norm if self.scaler is None else 0.0):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()  # closes this step's unscale_
            return self._rollback(state, loss, grad_norm), None
        if config.grad_clip is not None:
            clip_grads([p for _, p in self.par.params], config.grad_clip, grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            state.scaler = self.scaler.state_dict()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.position += 1
        state.tokens += b.tokens
        remember(state.recent_losses, loss, config.spike_window)
        seconds = time.perf_counter() - start
        tokens_per_s = b.tokens / seconds
        return state, {
            "step": state.step,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "position": position,
            "tokens": state.tokens,
            "tokens_per_s": round(tokens_per_s, 1),
            "mfu": round(tokens_per_s * self.flops_per_token / (self.peak * d.world), 4) if self.peak else None,
            "step_ms": round(seconds * 1000, 2),
            "memory_gb": round(memory_gb(d.device), 3),
        }

    def _agree(self, loss: torch.Tensor | None, norm_sq: torch.Tensor) -> tuple[float, float]:
        """The mean loss over data-parallel ranks and the global gradient norm, on every rank.
        One rank of each tensor-parallel group speaks for it; under pipelining the last stage
        has the loss and each stage its share of the norm."""
        d = self.d
        speaks = d.coord("tp") == 0
        values = torch.zeros(2, device=d.device)
        if loss is not None and speaks:
            values[0] = loss.float() / d.dp_size
        if speaks and d.dp_rank == 0:
            values[1] = norm_sq.to(d.device)
        loss_value, norm_sq_value = d.all_reduce(values).tolist()
        return loss_value, math.sqrt(norm_sq_value)

    def _rollback(self, state: TrainState, loss: float, grad_norm: float) -> TrainState:
        config = self.config
        event = {"step": state.step + 1, "position": state.position, "loss": loss, "grad_norm": grad_norm,
                 "running_mean": sum(state.recent_losses) / max(len(state.recent_losses), 1)}
        if state.rollbacks >= config.max_rollbacks:
            raise TokenmillError(
                f"loss {loss:.4g} (gradient norm {grad_norm:.4g}) at step {state.step + 1} after {state.rollbacks} "
                "rollbacks: the run keeps diverging; lower pretrain.lr or raise warmup_steps"
            )
        golden = self.ckpt.golden()
        if not golden:
            # Nothing to return to yet: drop this batch and carry on from the current weights.
            state.skipped.append([state.position, state.position])
            state.rollbacks += 1
            self.log.write("events.jsonl", {**event, "action": "skipped the batch (no golden checkpoint yet)",
                                            "skipped": [state.position, state.position]})
            return state
        restored = self._restore(golden[-1])
        skipped = skip_range(state.position, restored.position, config)
        restored.skipped = state.skipped + [skipped]
        restored.rollbacks = state.rollbacks + 1
        self.ckpt.drop_after(restored.step)
        self.log.truncate(restored.step)
        self.log.write("events.jsonl", {**event, "action": f"rolled back to golden checkpoint {golden[-1].name}",
                                        "golden_step": restored.step, "skipped": skipped})
        if self.d.is_main:
            what = (f"gradient norm {grad_norm} at step {event['step']}" if not math.isfinite(grad_norm) else
                    f"loss spike at step {event['step']} ({loss:.4g} against a running mean of {event['running_mean']:.4g})")
            tqdm.write(f"{what}: back to step {restored.step}, skipping batches {skipped[0]}-{skipped[1]}", file=sys.stderr)
        return restored

    # --- evaluation -------------------------------------------------------------------------------

    def evaluate(self, step: int) -> dict:
        """Validation loss and perplexity, and a sample, as this step's record fields."""
        out: dict = {}
        if self.val_data is not None:
            out["val_loss"] = self._val_loss()
            out["val_ppl"] = math.exp(min(out["val_loss"], 700))
        if self.config.sample_tokens and self.par.schedule is None:
            self._sample(step)
        return out

    def _val_loss(self) -> float:
        """Mean loss over `eval_batches` validation micro-batches (rounded up so that every
        data-parallel rank, and every pipeline step, gets whole ones): the same windows whatever
        the layout."""
        d, b, par = self.d, self.batch, self.par
        group = b.accum if par.schedule is not None else 1  # a pipeline evaluates a step's micro-batches at once
        calls = math.ceil(math.ceil(self.config.eval_batches / group) / d.dp_size)
        totals = torch.zeros(2, device=d.device)
        par.train(False)
        for i in range(calls):
            x, y = val_batch(self.val_data, i * d.dp_size + d.dp_rank, group * b.micro_batch, d.device)
            loss = par.eval_loss(x, y, self.amp)
            if loss is not None and d.coord("tp") == 0:
                totals += torch.stack([loss.float() * group, torch.tensor(float(group), device=d.device)])
        par.train(True)
        loss_sum, count = d.all_reduce(totals).tolist()
        return loss_sum / count

    def _sample(self, step: int) -> None:
        """Greedy, or top-k (Fan et al., 2018), drawn from a generator of its own: sampling never
        moves the training RNG (a resumed run must see the same dropout masks)."""
        prompt, tok, top_k = self.config.sample_prompt, self.tokenizer, self.config.sample_top_k
        ids = tok.prompt_ids(prompt) if tok is not None else [1]
        ids, n_tokens = fit_context(ids, self.config.sample_tokens, self.batch.seq_len)
        generator = torch.Generator(device=self.d.device).manual_seed(self.config.seed + step)
        with self.amp():
            out = generate(self.par.model, [ids], n_tokens, temperature=1.0 if top_k else 0.0, top_k=top_k or 0,
                           generator=generator)
        new = out.response_ids(0)
        text = tok.decode(new) if tok is not None else " ".join(map(str, new))
        self.log.write("samples.jsonl", {"step": step, "prompt": prompt, "text": text})

    # --- the end ------------------------------------------------------------------------------------

    def finish(self, state: TrainState, seconds: float) -> dict:
        """Export the model folder from the last checkpoint; write figures and report.json."""
        report: dict = {}
        if self.d.is_main:
            out = self.out_dir
            out.mkdir(parents=True, exist_ok=True)
            with atomic_dir(out / "model") as folder:
                export_model(self.ckpt.latest(), self.model_config, folder, self.tokenizer_dir)
            for name in LOGS:
                src = self.work_dir / name
                if src.is_file() and src.resolve() != (out / name).resolve():
                    shutil.copyfile(src, out / name)
            metrics = self.log.read("metrics.jsonl")
            report = self._report(state, metrics, seconds)
            baselines = {"unigram entropy": report["baselines"]["unigram_entropy"]}
            report["figures"] = write_figures(metrics, out, baselines)
            write_json(out / "report.json", report)
        self.d.barrier()
        return self.d.broadcast(report)

    def _report(self, state: TrainState, metrics: list[dict], seconds: float) -> dict:
        steps = [m for m in metrics if "loss" in m]
        evals = [m for m in metrics if "val_loss" in m]
        timed = steps[2:] or steps  # the first steps warm up
        tail = steps[-20:]  # the final train loss is the mean of the last 20 steps
        b = self.batch
        return {
            "steps": state.step,
            "tokens": state.tokens,
            "params": self.params,
            "batch": {"tokens": b.tokens, "sequences": b.sequences, "seq_len": b.seq_len, "micro_batch": b.micro_batch,
                      "accumulation": b.accum},
            "layout": {"world": self.d.world, **self.d.degrees},
            "device": torch.cuda.get_device_name(self.d.device) if self.d.device.type == "cuda" else "cpu",
            "precision": str(self.amp_dtype or torch.float32).removeprefix("torch."),
            "final": {
                "train_loss": sum(m["loss"] for m in tail) / len(tail) if tail else None,
                "val_loss": evals[-1]["val_loss"] if evals else None,
                "val_ppl": evals[-1]["val_ppl"] if evals else None,
            },
            "baselines": {
                "uniform": math.log(self.model_config.vocab_size),
                "unigram_entropy": unigram_entropy(self.tokens_dir, self.model_config.vocab_size),
            },
            "throughput": {
                "tokens_per_s": statistics.median(m["tokens_per_s"] for m in timed) if timed else None,
                "mfu": statistics.median(m["mfu"] for m in timed) if timed and timed[0]["mfu"] is not None else None,
                "flops_per_token": self.flops_per_token,
                "peak_flops": self.peak,
            },
            "chinchilla": chinchilla(self.params, state.tokens),
            "spikes": {"rollbacks": state.rollbacks, "skipped": state.skipped},
            "seconds": round(seconds, 2),
        }
