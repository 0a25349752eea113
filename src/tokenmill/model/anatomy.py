"""Stage 07, the weights: what every tensor is, its share of the parameters, and what it does.

A breakdown needs only the config (a meta-device model: shapes, no memory), so it works for
LLaMA-70B as well as for a trained folder. Attention patterns and nearest tokens need weights.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from tokenmill.atomic import write_json, write_text
from tokenmill.figures import bar_chart, heatmaps, human_count
from tokenmill.model.config import ModelConfig
from tokenmill.model.io import TIED
from tokenmill.model.transformer import Transformer

# (pattern on a parameter name, role); the first match wins.
ROLES = [
    (r"^tok_embeddings\.weight$", "embedding"),
    (r"^pos_embeddings\.weight$", "position embedding"),
    (r"\.wqkv\.weight$", "W_QKV"),
    (r"\.wo\.weight$", "W_O"),
    (r"\.w1\.weight$", "FFN W1"),
    (r"\.w2\.weight$", "FFN W2"),
    (r"\.w3\.weight$", "FFN W3"),
    (r"\.(wqkv|wo|w1|w2|w3)\.bias$", "bias"),
    (r"norm\.weight$", "norm γ"),
    (r"norm\.bias$", "norm β"),
    (r"^output\.weight$", "head"),
]


def role_of(name: str) -> str:
    for pattern, role in ROLES:
        if re.search(pattern, name):
            return role
    raise ValueError(f"no role for parameter '{name}'")


def tensor_rows(config: ModelConfig) -> list[dict]:
    """Every tensor: name, role, shape, parameters, share. A tied head counts zero (it is the embedding)."""
    with torch.device("meta"):
        model = Transformer(config)
    rows = []
    for name, t in model.state_dict().items():
        tied = name == TIED and config.tie_embeddings
        rows.append({"name": name, "role": role_of(name), "shape": list(t.shape), "params": 0 if tied else t.numel(), "tied": tied})
    total = sum(r["params"] for r in rows)
    for r in rows:
        r["share"] = r["params"] / total
    return rows


def role_totals(rows: list[dict]) -> dict[str, dict]:
    totals: dict[str, dict] = {}
    for r in rows:
        entry = totals.setdefault(r["role"], {"params": 0, "tensors": 0, "share": 0.0})
        entry["params"] += r["params"]
        entry["tensors"] += 1
        entry["share"] += r["share"]
    return totals


def _shape(shape: list[int]) -> str:
    return " × ".join(f"{d:,}" for d in shape)


def format_breakdown(rows: list[dict], every_tensor: bool = False) -> str:
    """Per-role totals, then the tensors; the tensors of layers 1..L-1 fold into layer 0's rows."""
    total = sum(r["params"] for r in rows)
    lines = [f"{'role':<20}{'tensors':>8}{'parameters':>16}{'share':>8}"]
    for role, t in role_totals(rows).items():
        params = "tied" if role == "head" and not t["params"] else f"{t['params']:,}"
        lines.append(f"{role:<20}{t['tensors']:>8}{params:>16}{t['share']:>8.1%}")
    lines.append(f"{'total':<20}{len(rows):>8}{total:>16,}  ({human_count(total)})")
    lines.append("")
    groups: dict[str, list[dict]] = {}
    for r in rows:
        key = r["name"] if every_tensor else re.sub(r"^layers\.\d+\.", "layers.*.", r["name"])
        groups.setdefault(key, []).append(r)
    width = max(len(k) for k in groups) + 2
    lines.append(f"{'tensor':<{width}}{'role':<20}{'shape':<18}{'count':>6}{'parameters':>16}{'share':>8}")
    for key, group in groups.items():
        r = group[0]
        params = "tied" if r["tied"] else f"{sum(g['params'] for g in group):,}"
        share = sum(g["share"] for g in group)
        lines.append(f"{key:<{width}}{r['role']:<20}{_shape(r['shape']):<18}{len(group):>6}{params:>16}{share:>8.1%}")
    return "\n".join(lines)


def roles_chart(totals: dict[str, dict]) -> str:
    bars = [(role, t["params"], f"{human_count(t['params'])} ({t['share']:.1%})") for role, t in totals.items() if t["params"]]
    return bar_chart("Parameters per role", bars, "parameters", human_count)


def load_tokenizer(folder: Path):
    """The folder's Hugging Face tokenizer, or None: then tokens are shown as ids."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return None
    return Tokenizer.from_file(str(path))


def token_labels(ids: list[int], tokenizer) -> list[str]:
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.id_to_token(i) or str(i) for i in ids]


@torch.no_grad()
def attention_patterns(model: Transformer, ids: list[int]) -> np.ndarray:
    """Attention probabilities of a prompt: (layers, heads, T, T), float32."""
    device = model.tok_embeddings.weight.device
    _, attns = model(torch.tensor([ids], device=device), return_attn=True)
    return torch.stack([a[0].float() for a in attns]).cpu().numpy()


def save_attention(folder: Path, probs: np.ndarray, labels: list[str], ids: list[int], layer: int, head: int) -> list[str]:
    """attention.npz (full precision), attention.json (for the explorer) and one head's heatmap SVG."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "attention.npz", probs=probs, ids=np.array(ids))
    write_json(folder / "attention.json", {
        "tokens": labels, "ids": ids, "layers": probs.shape[0], "heads": probs.shape[1],
        "probs": np.round(probs, 4).tolist(),  # [layer][head][query][key]
    })
    svg = f"attention_L{layer}_H{head}.svg"
    write_text(folder / svg, heatmaps(f"attention, layer {layer}", {f"head {head}": probs[layer, head]}, labels))
    return ["attention.npz", "attention.json", svg]


@torch.no_grad()
def nearest_tokens(model: Transformer, token_id: int, k: int = 10) -> list[tuple[int, float]]:
    """The k tokens whose embeddings have the highest cosine similarity to token_id's."""
    emb = model.tok_embeddings.weight.float()
    if not 0 <= token_id < emb.shape[0]:
        raise ValueError(f"token id {token_id} is outside the vocabulary (0..{emb.shape[0] - 1})")
    sims = torch.nn.functional.cosine_similarity(emb, emb[token_id][None], dim=-1)
    sims[token_id] = -2.0  # not itself
    top = sims.topk(min(k, emb.shape[0] - 1))
    return [(int(i), float(s)) for s, i in zip(top.values, top.indices)]
