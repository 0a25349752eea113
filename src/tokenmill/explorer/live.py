"""What the explorer computes on request: tokens of a text, attention on a prompt, each token's
loss, one prompt answered by every model, the engine's state."""

from __future__ import annotations

import codecs
import math
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from tokenmill.errors import TokenmillError
from tokenmill.explorer.stages import model_folder, model_folders

MAX_TEXT_CHARS = 20_000  # the tokenizer box
MAX_ATTENTION_TOKENS = 48  # a heat-map with more rows cannot be read
COMPARE_TOKENS = 32  # new tokens per answer in the comparison of models
COMPARE_TEMPERATURE = 0.8
MAX_GRID_BLOCKS = 2048  # KV-cache blocks drawn one by one; a bigger pool is shown as a bar


def token_pieces(tokenizer, ids: list[int]) -> list[dict]:
    """Each token's id and the text it adds. A token that ends inside a character adds nothing and
    the token that completes it carries the whole character, so no piece is ever half a character."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return [{"id": i, "text": decoder.decode(tokenizer.token_bytes(i))} for i in ids]


def loss_strip(tokenizer, model, text: str) -> dict | None:
    """Each token's loss (nats) under `model` after the tokens before it, up to its context."""
    from tokenmill.model.scoring import score

    ids = tokenizer.encode(text)
    if tokenizer.bos_id is not None:
        ids = [tokenizer.bos_id, *ids]
    ids = ids[: model.config.context_length + 1]
    if len(ids) < 2:
        return None
    losses = [-lp for lp in score(model, [ids])[0].logprobs]
    pieces = token_pieces(tokenizer, ids[1:])
    mean = sum(losses) / len(losses)
    return {"tokens": [{"text": p["text"], "loss": round(x, 3)} for p, x in zip(pieces, losses)],
            "mean": round(mean, 3), "perplexity": round(math.exp(mean), 2), "max": round(max(losses), 3)}


class Live:
    """Loads the tokenizer and models of one run folder on first use and keeps them."""

    def __init__(self, run_dir: Path, keep_models: int = 2) -> None:
        self.run_dir, self.keep_models = run_dir, keep_models
        self._lock = threading.Lock()
        self._tokenizer = None
        self._models: OrderedDict[str, object] = OrderedDict()
        self._reward = None  # the run's reward model, loaded on the first comparison
        self._attention: OrderedDict[tuple[str, str], tuple[list[str], np.ndarray]] = OrderedDict()

    def tokenizer(self):
        from tokenmill.tokenizer import Tokenizer

        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = Tokenizer.load(self.run_dir / "03_tokenizer")
            return self._tokenizer

    def tokenize(self, text: str) -> dict:
        if len(text) > MAX_TEXT_CHARS:
            raise TokenmillError(f"the text is {len(text):,} characters; the tokenizer box takes at most {MAX_TEXT_CHARS:,}")
        tok = self.tokenizer()
        ids = tok.encode(text)
        size = len(text.encode("utf-8", "replace"))
        return {"tokens": token_pieces(tok, ids), "count": len(ids), "bytes": size,
                "bytes_per_token": round(size / len(ids), 3) if ids else None}

    def _model(self, key: str):
        import torch

        from tokenmill.model.io import load_model

        folder = model_folder(self.run_dir, key)
        if folder is None:
            raise TokenmillError(f"this run has no model '{key}'")
        if key not in self._models:
            self._models[key] = load_model(folder, dtype=None if (folder / "quantization.json").is_file() else torch.float32)
            while len(self._models) > self.keep_models:
                self._models.popitem(last=False)
        self._models.move_to_end(key)
        return self._models[key]

    def attention(self, key: str, prompt: str) -> tuple[list[str], np.ndarray]:
        """Token labels and attention probabilities (layers, heads, T, T) of `prompt` under model `key`."""
        from tokenmill.model.anatomy import attention_patterns

        if not prompt.strip():
            raise TokenmillError("the prompt is empty")
        prompt = prompt[:MAX_TEXT_CHARS]
        tok = self.tokenizer()
        with self._lock:
            if (key, prompt) in self._attention:
                return self._attention[(key, prompt)]
            model = self._model(key)
            limit = min(model.config.context_length, MAX_ATTENTION_TOKENS)
            ids = tok.prompt_ids(prompt)[:limit]
            labels = [p["text"] or "·" for p in token_pieces(tok, ids)]
            if ids[:1] == [tok.bos_id]:
                labels[0] = tok.id_to_token(tok.bos_id)
            found = (labels, attention_patterns(model, ids))
            self._attention[(key, prompt)] = found
            while len(self._attention) > 16:
                self._attention.popitem(last=False)
            return found


    def token_losses(self, key: str, text: str) -> dict | None:
        """Each token's loss under model `key` (see loss_strip); None when the run has no such model."""
        if model_folder(self.run_dir, key) is None:
            return None
        tok = self.tokenizer()
        with self._lock:
            return loss_strip(tok, self._model(key), text[:MAX_TEXT_CHARS])

    def compare(self, prompt: str, max_new_tokens: int = COMPARE_TOKENS, seed: int = 0) -> dict:
        """`prompt` answered by every model of the run, greedy and sampled, each answer scored by the
        reward model (06_align/rm) when the run has one."""
        from tokenmill.align.reward import load_reward_model
        from tokenmill.align.winrate import sample_and_score

        if not prompt.strip():
            raise TokenmillError("the prompt is empty")
        tok = self.tokenizer()
        rm_dir = self.run_dir / "06_align" / "rm"
        with self._lock:
            if self._reward is None and (rm_dir / "model.json").is_file():
                self._reward = load_reward_model(rm_dir, device="cpu").float()
            reward = self._reward
            rows = []
            for m in model_folders(self.run_dir):
                model = self._model(m["key"])
                room = model.config.context_length - max_new_tokens
                ids = tok.encode_chat([{"role": "user", "content": prompt[:MAX_TEXT_CHARS]}], add_generation_prompt=True).ids
                if len(ids) > room:
                    raise TokenmillError(f"the prompt is {len(ids)} tokens; the models answer prompts of at most {room}")
                row = {"key": m["key"], "label": m["label"]}
                for name, temperature in (("greedy", 0.0), ("sampled", COMPARE_TEMPERATURE)):
                    scorer = reward if reward is not None else _no_reward
                    found = sample_and_score(model, scorer, tok, [ids], max_new_tokens, temperature, seed=seed)
                    row[name] = {"text": found.responses[0],
                                 "reward": round(float(found.scores[0]), 3) if reward is not None else None}
                rows.append(row)
        return {"prompt": prompt, "temperature": COMPARE_TEMPERATURE, "max_new_tokens": max_new_tokens,
                "reward_model": reward is not None, "answers": rows}


def _no_reward(sequences, attention_mask):
    import torch

    return torch.zeros(sequences.shape[0])


def engine_stats(engine) -> dict:
    """Running and waiting requests and the KV-cache blocks, read while the engine thread works.

    The gauges are Prometheus objects (thread-safe); the block table is copied in one step, which
    CPython does without letting the engine thread in between."""
    if engine is None:
        return {"attached": False}
    e = engine.engine
    registry = e.metrics.registry

    def sample(name: str, labels: dict | None = None) -> float:
        return registry.get_sample_value(name, labels or {}) or 0.0

    blocks = e.blocks
    refs = list(blocks.ref)
    cached = set(dict(blocks.hash_of))
    usable = blocks.num_usable_blocks
    used = sum(1 for r in refs[1:] if r > 0)
    stats = {
        "attached": True,
        "alive": engine.alive,
        "running": int(sample("tokenmill_requests_running")),
        "waiting": int(sample("tokenmill_requests_waiting")),
        "block_size": blocks.block_size,
        "blocks_total": usable,
        "blocks_used": used,
        "blocks_shared": sum(1 for r in refs[1:] if r > 1),
        "blocks_cached_free": sum(1 for b in range(1, len(refs)) if refs[b] == 0 and b in cached),
        "kv_usage": round(used / usable, 4) if usable else 0.0,
        "max_num_seqs": e.config.max_num_seqs,
        "generated_tokens": int(sample("tokenmill_generation_tokens_total")),
        "prompt_tokens": int(sample("tokenmill_prompt_tokens_total")),
        "preemptions": int(sample("tokenmill_preemptions_total")),
        "prefix_hit_tokens": int(sample("tokenmill_prefix_cache_hits_tokens_total")),
    }
    if usable <= MAX_GRID_BLOCKS:
        # 0 free, 1 free but its prefix still cached, 2 held by one sequence, 3 shared
        stats["blocks"] = [0 if r == 0 and b not in cached else 1 if r == 0 else 2 if r == 1 else 3
                           for b, r in enumerate(refs) if b > 0]
    return stats
