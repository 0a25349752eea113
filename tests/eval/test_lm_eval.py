"""The lm-eval model type `tokenmill` and `local-completions` against `tokenmill serve` give the
same per-sample log-likelihoods as a direct forward pass, the same greedy flags, and the same
greedy generations. Each model type is evaluated once, on all three tasks, for the whole module."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"
import lm_eval  # the `eval` extra, part of `dev`
from lm_eval.tasks import TaskManager
from serve_helpers import NAME, LiveServer

from tokenmill.deploy.serve.engine import EngineConfig
from tokenmill.deploy.serve.server import Limits
from tokenmill.eval import TokenmillLM

TASKS = ["tiny_ll", "tiny_rolling", "tiny_gen"]


def evaluate(model: str | TokenmillLM, model_args: str, task_dir) -> dict[str, list[dict]]:
    """Each task's per-sample records, in document order. A record's `filtered_resps` holds one
    response per request (one request per document here): (log-likelihood, is greedy) for
    `loglikelihood`, the summed log-likelihood for `loglikelihood_rolling`, the text for
    `generate_until`; `resps` nests these once more, one list per request of its repeats. Only the
    tasks written here are indexed: lm-eval's own few thousand take seconds to list."""
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=TASKS, log_samples=True,
                                  task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
                                  batch_size=2)
    return {task: sorted(out["samples"][task], key=lambda s: s["doc_id"]) for task in TASKS}


def responses(samples: list[dict]) -> list:
    return [s["filtered_resps"][0] for s in samples]


def loglikelihoods(samples: list[dict]) -> list[float]:
    return [float(r[0]) for r in responses(samples)]


def greedy_flags(samples: list[dict]) -> list[bool]:
    return [bool(r[1]) for r in responses(samples)]


@torch.no_grad()
def direct(lm: TokenmillLM, samples: list[dict[str, str]]) -> list[tuple[float, bool]]:
    """(log p(continuation | context), whether each continuation token is the argmax) with one plain
    forward pass each, without special tokens (the prefix token, BOS, before an empty context), the
    context's trailing spaces moved to the continuation, the pair cut to the model's context plus one token."""
    model, tok = lm.model, lm.tokenizer
    results = []
    for s in samples:
        context, continuation = s["context"], s["continuation"]
        spaces = len(context) - len(context.rstrip())
        context, continuation = context[: len(context) - spaces], context[len(context) - spaces:] + continuation
        whole = tok.encode(context + continuation)
        n_context = len(tok.encode(context)) if context else 0
        ids = whole if context else [tok.bos_id, *whole]
        n_continuation = len(ids) - (n_context if context else 1)
        ids = ids[-(model.config.context_length + 1):]  # a longer pair keeps its end, as lm-eval's models do
        logp = model(torch.tensor([ids[:-1]]))[0].float().log_softmax(-1)
        positions = range(len(ids) - n_continuation, len(ids))
        results.append((sum(float(logp[i - 1, ids[i]]) for i in positions),
                        all(int(logp[i - 1].argmax()) == ids[i] for i in positions)))
    return results


@pytest.fixture(scope="module")
def tokenmill_lm(model_dir) -> TokenmillLM:
    return TokenmillLM(pretrained=str(model_dir), batch_size=2)


@pytest.fixture(scope="module")
def local(tokenmill_lm, task_dir) -> dict[str, list[dict]]:
    return evaluate(tokenmill_lm, "", task_dir)


@pytest.fixture(scope="module")
def served(model_dir, task_dir) -> dict[str, list[dict]]:
    live = LiveServer(model_dir, EngineConfig(block_size=8, num_blocks=128), Limits())
    try:
        args = (f"model={NAME},base_url={live.url}/v1/completions,tokenizer_backend=huggingface,"
                f"tokenizer={model_dir},max_length=96,num_concurrent=1")
        yield evaluate("local-completions", args, task_dir)
    finally:
        live.stop()


def test_tokenmill_model_type_matches_a_direct_forward_pass(tokenmill_lm, local, samples):
    assert lm_eval.api.registry.get_model("tokenmill") is TokenmillLM  # what `--model tokenmill` finds
    expected = direct(tokenmill_lm, samples)
    assert loglikelihoods(local["tiny_ll"]) == pytest.approx([e[0] for e in expected], abs=1e-3)
    assert greedy_flags(local["tiny_ll"]) == [e[1] for e in expected]
    # A document with an empty context scores like its own rolling log-likelihood.
    rolling = [float(r) for r in responses(local["tiny_rolling"])]
    assert rolling[1] == pytest.approx(loglikelihoods(local["tiny_ll"])[1], abs=1e-3)
    assert all(isinstance(r, str) for r in responses(local["tiny_gen"]))


def test_local_completions_against_the_server_match_in_process(served, local):
    # The last pair (and the last document) is longer than the context: local-completions keeps its
    # last max_length - 1 tokens (one is left for the token it asks the server to generate), HFLM (and
    # tokenmill) max_length + 1, so it is conditioned on fewer tokens there; the others fit.
    assert loglikelihoods(served["tiny_ll"])[:-1] == pytest.approx(loglikelihoods(local["tiny_ll"])[:-1], abs=1e-3)
    # local-completions reads a greedy flag from the server's top logprob of each continuation token.
    assert greedy_flags(served["tiny_ll"])[:-1] == greedy_flags(local["tiny_ll"])[:-1]
    rolling = [[float(r) for r in responses(samples["tiny_rolling"])] for samples in (served, local)]
    assert rolling[0][:-1] == pytest.approx(rolling[1][:-1], abs=1e-3)
    assert responses(served["tiny_gen"]) == responses(local["tiny_gen"])
