"""The lm-eval model type `tokenmill` and `local-completions` against `tokenmill serve` give the
same per-sample log-likelihoods as a direct forward pass, and the same greedy generations."""

from __future__ import annotations

import os

import pytest
import torch

os.environ["HF_DATASETS_OFFLINE"] = "1"
lm_eval = pytest.importorskip("lm_eval")  # the `eval` extra
from lm_eval.tasks import TaskManager  # noqa: E402

import tokenmill.eval  # noqa: E402,F401 - registers the model type
from tokenmill.deploy.serve.engine import EngineConfig  # noqa: E402
from tokenmill.deploy.serve.server import Limits  # noqa: E402
from tokenmill.model import load_model  # noqa: E402
from tokenmill.tokenizer import Tokenizer  # noqa: E402

from conftest import SAMPLES  # noqa: E402
from serve_helpers import NAME, LiveServer  # noqa: E402


def evaluate(model: str, model_args: str, tasks: list[str], task_dir) -> dict:
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, log_samples=True,
                                  task_manager=TaskManager(include_path=str(task_dir)), batch_size=2)
    return {task: sorted(out["samples"][task], key=lambda s: s["doc_id"]) for task in tasks}


def loglikelihoods(samples: list[dict]) -> list[float]:
    return [s["resps"][0][0][0] for s in samples]


@torch.no_grad()
def direct(model_dir) -> list[float]:
    """log p(continuation | context) with one plain forward pass each, without special tokens (the
    prefix token, BOS, before an empty context), the context's trailing spaces moved to the continuation,
    the pair cut to the model's context plus one token."""
    model, tok = load_model(model_dir, device="cpu"), Tokenizer.load(model_dir)
    scores = []
    for s in SAMPLES:
        context, continuation = s["context"], s["continuation"]
        spaces = len(context) - len(context.rstrip())
        context, continuation = context[: len(context) - spaces], context[len(context) - spaces:] + continuation
        whole = tok.encode(context + continuation)
        n_context = len(tok.encode(context)) if context else 0
        ids = whole if context else [tok.bos_id, *whole]
        n_continuation = len(ids) - (n_context if context else 1)
        ids = ids[-(model.config.context_length + 1):]  # a longer pair keeps its end, as lm-eval's models do
        logp = model(torch.tensor([ids[:-1]]))[0].float().log_softmax(-1)
        scores.append(sum(float(logp[i - 1, ids[i]]) for i in range(len(ids) - n_continuation, len(ids))))
    return scores


@pytest.fixture(scope="module")
def server(model_dir):
    live = LiveServer(model_dir, EngineConfig(block_size=8, num_blocks=128), Limits())
    yield live
    live.stop()


def test_tokenmill_model_type_matches_a_direct_forward_pass(model_dir, task_dir):
    samples = evaluate("tokenmill", f"pretrained={model_dir}", ["tiny_ll", "tiny_rolling", "tiny_gen"], task_dir)
    assert loglikelihoods(samples["tiny_ll"]) == pytest.approx(direct(model_dir), abs=1e-3)
    rolling = [s["resps"][0][0] for s in samples["tiny_rolling"]]
    # A document with an empty context scores like its own rolling log-likelihood.
    whole = evaluate("tokenmill", f"pretrained={model_dir}", ["tiny_ll"], task_dir)["tiny_ll"]
    assert rolling[1] == pytest.approx(loglikelihoods(whole)[1], abs=1e-3)
    assert all(isinstance(s["resps"][0][0], str) for s in samples["tiny_gen"])


def test_local_completions_against_the_server_match_in_process(model_dir, task_dir, server):
    args = (f"model={NAME},base_url={server.url}/v1/completions,tokenizer_backend=huggingface,"
            f"tokenizer={model_dir},max_length=96,num_concurrent=1")
    served = evaluate("local-completions", args, ["tiny_ll", "tiny_gen"], task_dir)
    local = evaluate("tokenmill", f"pretrained={model_dir}", ["tiny_ll", "tiny_gen"], task_dir)
    # The last pair is longer than the context: local-completions keeps its last max_length tokens, HFLM
    # (and tokenmill) max_length + 1, so it is conditioned on one token less there; the others fit.
    assert loglikelihoods(served["tiny_ll"])[:-1] == pytest.approx(loglikelihoods(local["tiny_ll"])[:-1], abs=1e-3)
    assert [s["resps"][0][1] for s in served["tiny_ll"]] == [s["resps"][0][1] for s in local["tiny_ll"]]
    assert [s["resps"][0][0] for s in served["tiny_gen"]] == [s["resps"][0][0] for s in local["tiny_gen"]]
