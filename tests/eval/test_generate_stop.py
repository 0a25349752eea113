"""`generate_until` with stop sequences gives the server's greedy output for the same prompt tokens
and the same stop strings."""

from __future__ import annotations

import httpx
from lm_eval.api.instance import Instance
from serve_helpers import NAME, LiveServer

from tokenmill.deploy.serve.engine import EngineConfig
from tokenmill.deploy.serve.server import Limits
from tokenmill.eval import TokenmillLM

PROMPTS = ["The function returns", "An exception is raised when", "The for statement iterates over"]
STOPS = [[". "], ["e", "\n"], ["the", "s"]]


def test_generate_until_with_stop_sequences_equals_the_servers_greedy_output(model_dir):
    lm = TokenmillLM(pretrained=str(model_dir), batch_size=2, add_bos_token=True)
    requests = [Instance("generate_until", {}, (p, {"until": s, "max_gen_toks": 20, "do_sample": False}), 0)
                for p, s in zip(PROMPTS, STOPS)]
    ours = lm.generate_until(requests)
    live = LiveServer(model_dir, EngineConfig(block_size=8, num_blocks=128), Limits())
    try:
        served = []
        for prompt, stop in zip(PROMPTS, STOPS):
            reply = httpx.post(f"{live.url}/v1/completions", headers=live.headers, timeout=60, json={
                "model": NAME, "prompt": lm.tok_encode(prompt), "max_tokens": 20, "temperature": 0, "stop": stop})
            reply.raise_for_status()
            served.append(reply.json()["choices"][0]["text"])
    finally:
        live.stop()
    assert ours == served
    # The stop strings did cut: no response holds one of its own.
    assert all(not any(s in text for s in stop) for text, stop in zip(ours, STOPS))
