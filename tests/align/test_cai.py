"""Constitutional AI: answer, critique against a principle, revise; in process and through an
OpenAI-compatible endpoint (tokenmill's own server), into files the alignment loaders read."""

from __future__ import annotations

import json

import httpx
import pytest
from rl_helpers import LiveServer, load_tokenizer, model_folder, tiny_model, train_tiny_tokenizer

from tokenmill.align.cai import CaiConfig, Constitution, fill, run_cai
from tokenmill.align.data import load_conversations, load_preferences
from tokenmill.align.openai_client import ChatClient, EndpointConfig, EndpointError
from tokenmill.deploy.serve.server import Limits
from tokenmill.errors import TokenmillError

KEY = "cai-test-key-0123456789"
QUESTIONS = ["What is a lambda?", "How do I open a file?", "What does the with statement do?",
             "Explain a list comprehension.", "What is a generator?", "Why use try?"]
PROMPTS = [[{"role": "user", "content": q}] for q in QUESTIONS]


@pytest.fixture(scope="module")
def cai_model_dir(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("cai")
    tokenizer_dir = train_tiny_tokenizer(folder)
    tokenizer = load_tokenizer(tokenizer_dir)
    return model_folder(tiny_model(tokenizer.vocab_size, context_length=256, d_model=48), tokenizer_dir, folder / "model")


@pytest.fixture(scope="module")
def live(cai_model_dir):
    server = LiveServer(cai_model_dir, "tiny", api_key=KEY)
    yield server
    server.stop()


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_outputs(out, summary, config: CaiConfig):
    """The files are in the formats the loaders read and tell the same story as critiques.jsonl."""
    records = read_jsonl(out / "critiques.jsonl")
    principles = Constitution(config).principles
    assert summary["critiques"] == len(records) > 0
    for r, prompt in zip(records, PROMPTS):
        assert r["prompt"] == prompt and r["principle"] in principles
        assert r["critique_request"] == fill(Constitution(config).critique, {
            "principle": r["principle"], "prompt": prompt[-1]["content"], "answer": r["answer"]})
        assert r["answer"] and r["critique"]
    revised = [r for r in records if r["revision"]]
    sft = load_conversations(out / "sft.jsonl")
    assert [c.messages for c in sft] == [r["prompt"] + [{"role": "assistant", "content": r["revision"]}] for r in revised]
    pairs = [r for r in revised if r["revision"] != r["answer"]]
    prefs = load_preferences(out / "pref.jsonl")
    assert [(p.prompt, p.chosen, p.rejected) for p in prefs] == [(r["prompt"], r["revision"], r["answer"]) for r in pairs]
    assert summary["revisions"] == len(sft) and summary["preference_pairs"] == len(prefs) > 0
    assert (out / "constitution.txt").read_text().splitlines() == principles
    assert json.loads((out / "summary.json").read_text()) == summary


def test_cai_with_the_local_model_writes_critiques_revisions_and_pairs(cai_model_dir, tmp_path):
    config = CaiConfig(answer_tokens=16, critique_tokens=12, temperature=0.8, device="cpu")
    summary = run_cai(config, cai_model_dir, PROMPTS, tmp_path / "out")
    check_outputs(tmp_path / "out", summary, config)
    assert summary["prompts"] == len(PROMPTS) and summary["model"] == str(cai_model_dir)


def test_cai_through_tokenmill_s_server_gives_the_local_model_s_greedy_text(cai_model_dir, live, tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_TEST_KEY", KEY)
    endpoint = EndpointConfig(base_url=live.url, model="tiny", api_key_env="CAI_TEST_KEY", concurrency=3)
    remote = CaiConfig(endpoint=endpoint, answer_tokens=16, critique_tokens=12, temperature=0)
    summary = run_cai(remote, None, PROMPTS, tmp_path / "remote")
    check_outputs(tmp_path / "remote", summary, remote)
    # Greedy decoding in process and on the server: every turn of every conversation is the same.
    local = remote.model_copy(update={"endpoint": None, "device": "cpu"})
    run_cai(local, cai_model_dir, PROMPTS, tmp_path / "local")
    for name in ("critiques.jsonl", "sft.jsonl", "pref.jsonl"):
        assert read_jsonl(tmp_path / "remote" / name) == read_jsonl(tmp_path / "local" / name), name


def test_a_conversation_the_endpoint_refuses_is_skipped_alone(cai_model_dir, tmp_path, monkeypatch):
    # The revision turns are the longest (about 180 to 210 tokens here): a server that takes
    # prompts of at most 192 tokens refuses some of them, and nothing else.
    server = LiveServer(cai_model_dir, "tiny", limits=Limits(max_prompt_tokens=192))
    try:
        config = CaiConfig(endpoint=EndpointConfig(base_url=server.url, model="tiny"), answer_tokens=16,
                           critique_tokens=12, temperature=0)
        summary = run_cai(config, None, PROMPTS, tmp_path / "out")
    finally:
        server.stop()
    records = read_jsonl(tmp_path / "out" / "critiques.jsonl")
    assert len(records) == len(PROMPTS) and summary["skipped"].keys() == {"no_revision"}
    assert sum(r["revision"] is None for r in records) == summary["skipped"]["no_revision"]
    assert 0 < summary["skipped"]["no_revision"] < len(PROMPTS)
    assert summary["revisions"] == len(records) - summary["skipped"]["no_revision"]


def test_endpoint_errors_name_the_endpoint_and_the_reason(live, monkeypatch):
    monkeypatch.setenv("CAI_WRONG_KEY", "not-the-key")
    messages = [{"role": "user", "content": "Hi"}]
    with pytest.raises(EndpointError, match=r"answered 401") as e:
        ChatClient(EndpointConfig(base_url=live.url, model="tiny", api_key_env="CAI_WRONG_KEY")).chat(messages, 4, 0)
    assert e.value.status == 401
    monkeypatch.setenv("CAI_TEST_KEY", KEY)
    with pytest.raises(EndpointError, match="answered 404: the model 'big' does not exist"):
        ChatClient(EndpointConfig(base_url=live.url, model="big", api_key_env="CAI_TEST_KEY")).chat(messages, 4, 0)
    monkeypatch.delenv("CAI_UNSET_KEY", raising=False)
    with pytest.raises(TokenmillError, match=r"\$CAI_UNSET_KEY, which is not set"):
        ChatClient(EndpointConfig(base_url=live.url, model="tiny", api_key_env="CAI_UNSET_KEY"))
    with pytest.raises(EndpointError, match="cannot reach http://127.0.0.1:9/v1/chat/completions"):
        ChatClient(EndpointConfig(base_url="http://127.0.0.1:9/v1", model="tiny", max_retries=0)).chat(messages, 4, 0)


def test_retries_until_the_server_recovers(monkeypatch):
    calls, pauses = [], []
    monkeypatch.setattr("tokenmill.align.openai_client.time.sleep", pauses.append)

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        if len(calls) < 3:
            return httpx.Response(503, json={"error": {"message": "warming up"}})
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "Fine."}}]})

    client = ChatClient(EndpointConfig(base_url="http://llm.test/v1/", model="m", max_retries=2))
    client.http = httpx.Client(transport=httpx.MockTransport(handler))
    assert client.chat([{"role": "user", "content": "Hi"}], 8, 0.5, seed=3) == "Fine."
    assert calls[0] == {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
                        "temperature": 0.5, "seed": 3}
    assert len(calls) == 3 and pauses == [0.5, 1.0]  # exponential backoff


def test_user_edited_prompts_and_their_mistakes(tmp_path):
    (tmp_path / "c.txt").write_text("# mine\n\nBe {brief}.\n  Cite the manual.  \n")
    (tmp_path / "crit.txt").write_text("Is '{answer}' true to: {principle}?")
    (tmp_path / "rev.txt").write_text("Fix it: {critique}")
    config = CaiConfig(constitution=tmp_path / "c.txt", critique_prompt=tmp_path / "crit.txt", revision_prompt=tmp_path / "rev.txt")
    constitution = Constitution(config)
    assert constitution.principles == ["Be {brief}.", "Cite the manual."]
    # Inserted text is not read again for placeholders.
    assert fill(constitution.critique, {"answer": "{principle}", "principle": "P", "prompt": ""}) == "Is '{principle}' true to: P?"
    (tmp_path / "bad.txt").write_text("Revise per {principel}")
    with pytest.raises(TokenmillError, match=r"bad.txt uses \{principel\}; a request may use \{answer\}"):
        Constitution(config.model_copy(update={"revision_prompt": tmp_path / "bad.txt"}))
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(TokenmillError, match="has no principle"):
        Constitution(config.model_copy(update={"constitution": tmp_path / "empty.txt"}))
    with pytest.raises(TokenmillError, match="critique request file .*missing.txt does not exist"):
        Constitution(config.model_copy(update={"critique_prompt": tmp_path / "missing.txt"}))
    with pytest.raises(TokenmillError, match="needs a model"):
        run_cai(CaiConfig(), None, PROMPTS, tmp_path / "out")


def test_the_cai_verb(cai_model_dir, tmp_path, capsys):
    import argparse

    from tokenmill.align.cli_rl import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"prompt": q}) + "\n" for q in QUESTIONS[:3]))
    args = parser.parse_args(["cai", str(cai_model_dir), "--prompts", str(tmp_path / "prompts.jsonl"), "-o",
                              str(tmp_path / "out"), "--set", "answer_tokens=8", "--set", "cai.critique_tokens=8",
                              "--set", "device=cpu"])
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["prompts"] == 3 and f"{summary['critiques']} critiques" in capsys.readouterr().out
    args = parser.parse_args(["cai", "--show-defaults"])
    assert args.func(args) == 0 and "{principle}" in capsys.readouterr().out
    args = parser.parse_args(["cai", str(cai_model_dir), "--prompts", "p", "-o", "o", "--set", "temprature=1"])
    with pytest.raises(TokenmillError, match="unknown key 'cai.temprature'"):
        args.func(args)
    args = parser.parse_args(["cai", "--endpoint", "http://x/v1", "--prompts", "p", "-o", "o"])
    with pytest.raises(TokenmillError, match="--endpoint needs --endpoint-model"):
        args.func(args)
