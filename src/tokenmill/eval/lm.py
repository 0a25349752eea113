"""The lm-eval model type `tokenmill`: a tokenmill model folder under lm-evaluation-harness.

    python -m tokenmill.eval --model tokenmill --model_args pretrained=MODEL_DIR --tasks hellaswag

Requests mean what they mean for lm-eval's Hugging Face model (HFLM): a context and a
continuation are encoded together and split where the context's tokens end; an empty context is
conditioned on the prefix token (BOS, or EOS for a tokenizer without one); a document's rolling
log-likelihood is scored in disjoint windows of the model's context, the first after the prefix
token. Text is encoded without special tokens unless `add_bos_token=True`, as lm-eval's models
do by default; tokenmill's own models were trained with BOS before every document, so ask for it
when scores should be the model's best.

Log-likelihoods come from `tokenmill.model.scoring.score`, greedy generations from
`tokenmill.model.generate.generate` (the KV cache), each over batches of `batch_size` requests,
longest first so that a batch pads little.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import lm_eval.models  # noqa: F401 - lm-eval fills its table of model types only while the registry is empty
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from tokenmill.errors import TokenmillError
from tokenmill.model.generate import generate
from tokenmill.model.io import load_model
from tokenmill.model.scoring import score
from tokenmill.tokenizer import Tokenizer

T = TypeVar("T")
DEFAULT_MAX_GEN_TOKS = 256  # as HFLM


def _batches(items: Sequence[T], size: int, length: Callable[[T], int]) -> list[list[int]]:
    """Indices of `items`, longest first, in batches of `size`."""
    order = sorted(range(len(items)), key=lambda i: -length(items[i]))
    return [order[a : a + size] for a in range(0, len(order), size)]


def _flag(value: Any) -> bool:
    """A boolean model argument, given as text on the command line."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise TokenmillError(f"add_bos_token must be true or false, got {value!r}")
        return value.lower() == "true"
    return bool(value)


@register_model("tokenmill")
class TokenmillLM(TemplateLM):
    def __init__(self, pretrained: str, device: str | None = None, dtype: str | None = None,
                 batch_size: int | str = 8, max_length: int | None = None, add_bos_token: bool | str = False,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, **unused: Any) -> None:
        super().__init__()
        if unused:
            raise TokenmillError(f"the tokenmill model type does not take {', '.join(sorted(unused))}; it takes "
                                 "pretrained, device, dtype, batch_size, max_length, add_bos_token, max_gen_toks")
        self.model = load_model(pretrained, device=device, dtype=getattr(torch, dtype) if dtype else None)
        self.tokenizer = Tokenizer.load(pretrained)
        self.batch_size = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_length = int(max_length or self.model.config.context_length)
        self.add_bos_token = _flag(add_bos_token)
        self.max_gen_toks = min(int(max_gen_toks), self.max_length - 1)  # at least one token of context
        self.pretrained = str(pretrained)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id

    @property
    def tokenizer_name(self) -> str:
        return self.pretrained

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        ids = self.tokenizer.encode(string)
        return [self.tokenizer.bos_id, *ids] if bos and self.tokenizer.bos_id is not None else ids

    def _loglikelihood_tokens(self, requests: list[tuple[Any, list[int], list[int]]], disable_tqdm: bool = False,
                              **kwargs: Any) -> list[tuple[float, bool]]:
        """(log p(continuation | context), whether the continuation is the greedy one) of each
        request; a pair longer than the context keeps its last max_length + 1 tokens."""
        sequences = [(context + continuation)[-(self.max_length + 1):] for _, context, continuation in requests]
        results: list[tuple[float, bool]] = [(0.0, True)] * len(requests)
        for batch in _batches(sequences, self.batch_size, len):
            for i, s in zip(batch, score(self.model, [sequences[i] for i in batch])):
                n = len(requests[i][2])
                results[i] = (sum(s.logprobs[-n:]), all(s.greedy[-n:]))
                if self.cache_hook is not None and requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], results[i])
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each document's log-likelihood in disjoint windows of the context, as HFLM scores it."""
        windows, owner = [], []
        for r, request in enumerate(requests):
            (text,) = request.args
            for context, continuation in map(make_disjoint_window, get_rolling_token_windows(
                    token_list=self.tok_encode(text, add_special_tokens=False), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, context, continuation))
                owner.append(r)
        totals = [0.0] * len(requests)
        for r, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[r] += logprob
        for request, total in zip(requests, totals):
            if self.cache_hook is not None:
                self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Each request's continuation, decoded through the KV cache until one of its stop
        strings (cut off there, as HFLM does) or EOS; greedy unless it asks to sample."""
        results: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        for indices in groups.values():
            kwargs = dict(requests[indices[0]].args[1])
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            sample = kwargs.pop("do_sample", False)
            temperature = float(kwargs.pop("temperature", 1.0 if sample else 0.0)) if sample else 0.0
            contexts = [self.tok_encode(requests[i].args[0])[-(self.max_length - max_new):] or [self.prefix_token_id]
                        for i in indices]
            for batch in _batches(contexts, self.batch_size, len):
                out = generate(self.model, [contexts[b] for b in batch], max_new_tokens=max_new,
                               temperature=temperature, stop_ids={self.tokenizer.eos_id},
                               pad_id=self.tokenizer.pad_id)
                for row, b in enumerate(batch):
                    text = self.tokenizer.decode(out.response_ids(row, strip_stop=True))
                    for stop in until:
                        if stop:
                            text = text.split(stop)[0]
                    results[indices[b]] = text
                    if self.cache_hook is not None:
                        self.cache_hook.add_partial("generate_until", requests[indices[b]].args, text)
        return results
