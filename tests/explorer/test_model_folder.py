"""The explorer opened on a model folder (one imported from the Hub) rather than a run folder: the
page shows that model's architecture and attention, tokenized with the model's own tokenizer, and
chats with it through its chat template."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from imported_model import hf_tokenizer, imported_model

from tokenmill.explorer.cli import build_app
from tokenmill.model.config import read_config

LOCAL = "http://localhost"
TEXT = "Grüße, world: 3 + 3 = 6 🙂"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return imported_model(tmp_path_factory.mktemp("imported"))


def test_a_model_folder_shows_its_tokenizer_anatomy_and_attention(model_dir):
    app, served = build_app(model_dir, serve=False)
    assert served is None
    c = TestClient(app, base_url=LOCAL)
    run = c.get("/api/run").json()
    assert run["name"] == "tm"
    status = {b["number"]: b["status"] for b in run["blocks"]}
    assert status["04"] == status["07"] == "done" and status["01"] == status["06"] == "not run"
    assert status["03"] == "partly done"  # the tokenizer, but no corpus encoded with it
    assert [m["key"] for m in run["models"]] == ["pretrained"]

    theirs = hf_tokenizer()
    tokens = c.post("/api/tokenize", json={"text": TEXT}).json()
    assert [t["id"] for t in tokens["tokens"]] == theirs.encode(TEXT, add_special_tokens=False)
    assert "".join(t["text"] for t in tokens["tokens"]) == TEXT

    config = read_config(model_dir)
    architecture = next(s for s in c.get("/api/panel/04").json()["sections"] if s["type"] == "architecture")
    assert architecture["config"]["d_model"] == config.d_model and architecture["attention"] == "GQA"
    weights = c.get("/api/panel/07").json()["sections"]
    assert next(s for s in weights if s["type"] == "attention")["layers"] == config.n_layers

    attention = c.post("/api/attention", json={"model": "pretrained", "prompt": TEXT}).json()
    assert len(attention["tokens"]) == len(theirs.encode(TEXT, add_special_tokens=False))  # Qwen adds no BOS
    assert (attention["layers"], attention["heads"]) == (config.n_layers, config.n_heads)
    assert c.get("/api/attention.svg", params={"model": "pretrained", "prompt": TEXT, "layer": 1}).status_code == 200
    assert not any(p.name.startswith(("03_", "04_", "05_", "summary")) for p in model_dir.iterdir())  # nothing written there


def test_a_served_model_folder_chats_through_its_template(model_dir):
    app, served = build_app(model_dir, device="cpu", kv_cache_mb=4)
    assert served == model_dir.resolve()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello 🙂"}]
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/api/run").json()["engine"]["model"] == "tm"
        r = c.post("/v1/chat/completions", json={"model": "tm", "messages": messages, "max_tokens": 2, "temperature": 0})
        assert r.status_code == 200, r.text
    prompt = hf_tokenizer().apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert r.json()["usage"]["prompt_tokens"] == len(prompt)


def test_a_run_model_picked_by_key_is_refused_on_a_model_folder(model_dir):
    from tokenmill.errors import TokenmillError

    with pytest.raises(TokenmillError, match="is a model folder"):
        build_app(model_dir, model_key="dpo", serve=False)
