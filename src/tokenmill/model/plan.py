"""Counting and planning: parameters, FLOPs per token, and the memory to train and to serve a model.

Formulas, each from its source:
- FLOPs per token of training: 6N + 12·L·H·Q·T (Chowdhery et al., 2022, PaLM, Appendix B;
  the 6N term as in Kaplan et al., 2020, §2.1), N the parameters used in matrix products
  (every projection and the output head, not the embedding lookups), L layers, H heads of
  dimension Q, T the attended context (capped by a sliding window). Forward alone is a third.
- Training state per parameter (Rajbhandari et al., 2020, ZeRO, §3.1): fp32 weights, gradients
  and two AdamW moments, 16 bytes; mixed precision keeps bf16 weights and gradients plus fp32
  master weights and moments, 16 bytes as well; pure bf16, 8 bytes.
- Activations (Korthikanti et al., 2022, eq. 2): 34·s·b·h bytes per layer with 16-bit
  activations when the attention kernel does not store the s² scores (SDPA's fused kernels),
  divided by the tensor-parallel degree with sequence parallelism; with 1F1B pipelining the
  first stage holds about L layers' worth whatever the pipeline degree (§4.2.3). Plus the
  float32 logits the loss reads, s·b·V·4 bytes.
- KV cache: 2 (K and V) · L · n_kv_heads · head_dim · bytes per token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from tokenmill.errors import TokenmillError
from tokenmill.figures import human_bytes, human_count
from tokenmill.model.anatomy import role_totals, tensor_rows
from tokenmill.model.config import ModelConfig

WEIGHT_BYTES = {"fp32": 4, "bf16": 2, "int8": 1, "int4": 0.5}
# bytes per parameter: weights, gradients, fp32 master weights, AdamW moments (m and v); activations' bytes
TRAINING_PRECISIONS = {
    "fp32": {"weights": 4, "grads": 4, "master": 0, "moments": 8, "activation_bytes": 4},
    "bf16-mixed": {"weights": 2, "grads": 2, "master": 4, "moments": 8, "activation_bytes": 2},
    "bf16": {"weights": 2, "grads": 2, "master": 0, "moments": 4, "activation_bytes": 2},
}
MATMUL_ROLES = ("W_QKV", "W_O", "FFN W1", "FFN W2", "FFN W3")


@dataclass(frozen=True)
class Layout:
    """How the GPUs split the work: data × tensor × pipeline parallel degrees."""

    dp: int = 1
    tp: int = 1
    pp: int = 1
    fsdp: bool = False  # weights, gradients and optimizer state sharded over the data-parallel ranks

    @property
    def gpus(self) -> int:
        return self.dp * self.tp * self.pp


def make_layout(config: ModelConfig, gpus: int | None, dp: int | None, tp: int, pp: int, fsdp: bool) -> Layout:
    if tp < 1 or pp < 1 or (dp is not None and dp < 1) or (gpus is not None and gpus < 1):
        raise TokenmillError("--gpus, --dp, --tp and --pp must be positive")
    if dp is None:
        gpus = gpus or tp * pp
        if gpus % (tp * pp):
            raise TokenmillError(f"--gpus {gpus} is not a multiple of --tp {tp} × --pp {pp}")
        dp = gpus // (tp * pp)
    elif gpus is not None and gpus != dp * tp * pp:
        raise TokenmillError(f"--gpus {gpus} differs from --dp {dp} × --tp {tp} × --pp {pp} = {dp * tp * pp}")
    if config.n_heads % tp:
        raise TokenmillError(f"--tp {tp} does not divide the {config.n_heads} attention heads")
    if config.n_layers < pp:
        raise TokenmillError(f"--pp {pp} exceeds the {config.n_layers} layers")
    return Layout(dp, tp, pp, fsdp)


def parameter_counts(config: ModelConfig) -> dict:
    totals = role_totals(tensor_rows(config))
    by_role = {role: t["params"] for role, t in totals.items()}
    total = sum(by_role.values())
    embedding = by_role.get("embedding", 0) + by_role.get("position embedding", 0)
    head = config.vocab_size * config.d_model  # a product even when tied to the embedding
    return {
        "total": total,
        "embedding": embedding,
        "non_embedding": total - embedding,
        "matmul": sum(by_role.get(r, 0) for r in MATMUL_ROLES) + head,
        "by_role": by_role,
    }


def flops_per_token(config: ModelConfig, counts: dict, seq_len: int) -> dict:
    n = counts["matmul"]
    # Each layer attends over the context its window allows (Gemma's global layers over all of it).
    contexts = [min(seq_len, config.layer_window(i) or seq_len) for i in range(config.n_layers)]
    attention = 4 * config.n_heads * config.head_dim * sum(contexts)  # QKᵀ and AV, forward
    return {"N": n, "context": sum(contexts) // config.n_layers, "forward": 2 * n + attention, "training": 6 * n + 3 * attention}


def training_memory(config: ModelConfig, counts: dict, layout: Layout, seq_len: int, batch: int) -> dict:
    """Bytes per GPU for each precision; `batch` sequences per data-parallel rank."""
    n = counts["total"]
    model_shards = layout.tp * layout.pp * (layout.dp if layout.fsdp else 1)
    per_layer = 34 * seq_len * batch * config.d_model / layout.tp
    logits = 4 * seq_len * batch * config.vocab_size / layout.tp
    out = {}
    for name, p in TRAINING_PRECISIONS.items():
        states = {k: n * p[k] / model_shards for k in ("weights", "grads", "master", "moments")}
        activations = config.n_layers * per_layer * p["activation_bytes"] / 2 + logits
        out[name] = {**states, "activations": activations, "total": sum(states.values()) + activations}
    return out


def serving_memory(config: ModelConfig, counts: dict, layout: Layout, seq_len: int, users: int, kv_bytes: int = 2) -> dict:
    n = counts["total"]
    per_token = 2 * config.n_layers * config.n_kv_heads * config.head_dim * kv_bytes
    shards = layout.tp * layout.pp
    return {
        "weights": {name: n * b for name, b in WEIGHT_BYTES.items()},
        "kv_per_token": per_token,
        "kv_per_user": per_token * seq_len,
        "kv_users": per_token * seq_len * users,
        "per_gpu_bf16": (n * 2 + per_token * seq_len * users) / shards,
    }


def make_plan(
    config: ModelConfig, name: str, layout: Layout, seq_len: int | None = None, batch: int = 1, users: int = 100
) -> dict:
    seq_len = seq_len or config.context_length
    counts = parameter_counts(config)
    return {
        "model": name,
        "seq_len": seq_len,
        "batch": batch,
        "users": users,
        "layout": {**asdict(layout), "gpus": layout.gpus},
        "parameters": counts,
        "flops_per_token": flops_per_token(config, counts, seq_len),
        "training": training_memory(config, counts, layout, seq_len, batch),
        "serving": serving_memory(config, counts, layout, seq_len, users),
    }


def format_plan(plan: dict, gpu_memory: float) -> str:
    p, f, s, lay = plan["parameters"], plan["flops_per_token"], plan["serving"], plan["layout"]
    T = plan["seq_len"]
    lines = [
        f"model {plan['model']}: {p['total']:,} parameters ({human_count(p['total'])}); "
        f"embedding {human_count(p['embedding'])}, the rest {human_count(p['non_embedding'])}",
        "  " + ", ".join(f"{role} {human_count(v) if v else 'tied'}" for role, v in p["by_role"].items()),
        "",
        f"FLOPs per token at T = {f['context']:,} (6N + 12·L·H·Q·T, N = {human_count(f['N'])} in matrix products):",
        f"  training {f['training']:.3g}, forward {f['forward']:.3g}",
        "",
        f"Training memory per GPU, {lay['gpus']} GPU(s) as dp {lay['dp']} × tp {lay['tp']} × pp {lay['pp']}"
        + (" with FSDP" if lay["fsdp"] else "") + f"; {plan['batch']} sequence(s) of {T:,} tokens per data-parallel rank:",
        f"  {'precision':<12}{'weights':>11}{'grads':>11}{'master':>11}{'AdamW m,v':>11}{'activations':>13}{'total':>11}",
    ]
    for name, m in plan["training"].items():
        fits = "fits" if m["total"] <= gpu_memory * 1e9 else f"over {gpu_memory:g} GB"
        cells = "".join(f"{human_bytes(m[k]) if m[k] else '-':>11}" for k in ("weights", "grads", "master", "moments"))
        lines.append(f"  {name:<12}{cells}{human_bytes(m['activations']):>13}{human_bytes(m['total']):>11}  {fits}")
    lines += [
        "",
        "Serving:",
        "  weights " + ", ".join(f"{k} {human_bytes(v)}" for k, v in s["weights"].items()),
        f"  KV cache (fp16) {human_bytes(s['kv_per_token'])} per token; {human_bytes(s['kv_per_user'])} per user at "
        f"{T:,} tokens; {human_bytes(s['kv_users'])} for {plan['users']} users",
        f"  per GPU (bf16 weights + KV cache, tp × pp = {lay['tp'] * lay['pp']}): {human_bytes(s['per_gpu_bf16'])}",
    ]
    return "\n".join(lines)
