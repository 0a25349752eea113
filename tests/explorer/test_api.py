"""The explorer's JSON and SVG routes over a small run made by the test."""

import json
import xml.etree.ElementTree as ET
from urllib.parse import quote

import numpy as np
import pytest
from explorer_run import EMAIL, MARKUP, planted_corpus
from fastapi.testclient import TestClient

from tokenmill.errors import TokenmillError
from tokenmill.explorer.app import explorer_app, mount_explorer
from tokenmill.explorer.stages import latest_model
from tokenmill.figures import line_chart

LOCAL = "http://localhost"  # the explorer answers to loopback names only


@pytest.fixture(scope="module")
def client(tiny_run):
    return TestClient(explorer_app(tiny_run), base_url=LOCAL)


def sections(client, number: str, kind: str | None = None) -> list[dict]:
    r = client.get(f"/api/panel/{number}")
    assert r.status_code == 200, r.text
    return [s for s in r.json()["sections"] if kind is None or s["type"] == kind]


def titled(found: list[dict], title: str) -> dict:
    return next(s for s in found if s.get("title") == title)


def labelled(section: dict) -> dict[str, str]:
    """A facts section as label -> value (the reading under a value left out)."""
    return {label: value for label, value, *_ in section["items"]}


def svg_root(client, url: str) -> ET.Element:
    r = client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(r.content)
    assert root.tag.endswith("svg") and not root.findall(".//{http://www.w3.org/2000/svg}script")
    return root


def test_blocks_in_pipeline_order_with_status_and_key_figure(client, tiny_run):
    run = client.get("/api/run").json()
    assert [b["number"] for b in run["blocks"]] == [f"0{i}" for i in range(1, 10)]
    status = {b["number"]: b["status"] for b in run["blocks"]}
    assert status == {f"0{i}": "done" for i in range(1, 10)}
    summary = {r["stage"]: r["figure"] for r in json.loads((tiny_run / "summary.json").read_text())}
    assert run["blocks"][3]["figure"] == summary["04_model"]
    assert run["blocks"][2]["figure"] == f"{summary['03_tokenizer']}; {summary['03_encode']}"
    assert [m["key"] for m in run["models"]] == ["quantized", "dpo", "ppo", "sft", "pretrained"]
    assert run["engine"]["attached"] is False


def test_every_chart_a_panel_names_is_drawn(client):
    for number in ("01", "02", "03", "04", "05", "07"):
        charts = sections(client, number, "chart")
        assert charts, number
        for c in charts:
            svg_root(client, f"/api/{c['src']}")
        for figures in sections(client, number, "figures"):
            for path in figures["files"]:
                assert client.get("/api/file", params={"path": path}).status_code == 200


def test_a_finished_run_shows_the_stages_own_charts_each_once(client):
    for number in [f"0{i}" for i in range(1, 10)]:
        found = sections(client, number)
        shown = [s["src"] for s in found if s["type"] == "chart"]
        shown += [f"file?path={quote(f, safe='')}" for s in found if s["type"] == "figures" for f in s["files"]]
        assert len(shown) == len(set(shown)), number  # no figure twice in a panel
        # Every stage has finished: each chart is a file its stage wrote, none drawn by the explorer.
        assert all(src.startswith("file?path=") for src in shown), number
    charts = {s["title"]: s["src"] for s in sections(client, "05", "chart")}
    assert charts == {"loss and validation loss": "file?path=05_pretrain%2Floss.svg",
                      "learning rate": "file?path=05_pretrain%2Flr.svg",
                      "gradient norm": "file?path=05_pretrain%2Fgrad_norm.svg"}


def test_sources_and_sizes(client, tiny_run):
    stats = json.loads((tiny_run / "01_data" / "stats.json").read_text())
    table = titled(sections(client, "01", "table"), "sources")
    assert [r[0] for r in table["rows"]] == ["0:local", "1:jsonl"]
    assert table["rows"][1][1] == f"{len(planted_corpus(tiny_run.parent / 'again.jsonl')):,}"
    assert [r[1] for r in table["rows"]] == [f"{s['documents']:,}" for s in stats["sources"]]


def test_curation_funnel_samples_duplicates_and_redactions(client, tiny_run):
    stats = json.loads((tiny_run / "02_curate" / "stats.json").read_text())
    per_filter = titled(sections(client, "02", "table"), "per filter")
    assert [r[0] for r in per_filter["rows"]] == [b["name"] for b in stats["blocks"]]
    assert [r[2] for r in per_filter["rows"]] == [f"{b['docs_in'] - b['docs_out']:,}" for b in stats["blocks"]]
    assert titled(sections(client, "02", "chart"), "what each filter removed")["src"] == "file?path=02_curate%2Fcuration.svg"
    funnel = svg_root(client, "/api/file?path=02_curate/curation.svg")
    assert len(funnel.findall(".//{http://www.w3.org/2000/svg}g")) > len(stats["blocks"])

    samples = sections(client, "02", "samples")[0]["groups"]
    reasons = {g["title"]: g["count"] for g in samples}
    expected = {r.replace(".", ": ").replace("_", " "): v["docs"] for b in stats["blocks"] for r, v in b["removed"].items()}
    assert reasons == expected and reasons["exact dedup: duplicate"] == 1

    texts = planted_corpus(tiny_run.parent / "again.jsonl")
    pairs = {p["kind"]: p for p in sections(client, "02", "pairs")[0]["pairs"]}
    exact, near = pairs["exact"], pairs["near"]
    assert "".join(s["text"] for s in exact["removed_segments"]) == texts["planted/essay-0"]
    assert MARKUP in texts["planted/essay-0"]  # shown in the browser test as text
    assert all(s["same"] for s in exact["removed_segments"] + exact["kept_segments"])
    assert {"".join(s["text"] for s in near[side]) for side in ("removed_segments", "kept_segments")} == {
        texts["planted/near-a"], texts["planted/near-b"]}
    differs = {s["text"].strip() for side in ("removed_segments", "kept_segments") for s in near[side] if not s["same"]}
    assert "lantern" in differs and len(differs) == 2
    assert 0.8 < near["jaccard"] < 1.0

    examples = sections(client, "02", "redactions")[0]["examples"]
    assert examples and all(any(seg["pii"] == "email" and seg["text"] == "<EMAIL>" for s in e["snippets"] for seg in s)
                            for e in examples)
    assert EMAIL not in client.get("/api/panel/02").text

    mixture = titled(sections(client, "02", "table"), "mixture")
    shares = json.loads((tiny_run / "02_curate" / "mixture.json").read_text())["domains"]
    assert [r[3] for r in mixture["rows"]] == [f"{d['effective_share']:.1%}" for d in shares.values()]


def test_tokenizer_box_matches_the_tokenizer_and_hugging_face(client, tiny_run):
    from tokenizers import Tokenizer as HFTokenizer

    text = "Naïve café — 日本語 🙂 tokens:\n    indented"
    out = client.post("/api/tokenize", json={"text": text}).json()
    hf = HFTokenizer.from_file(str(tiny_run / "03_tokenizer" / "tokenizer.json"))
    assert [t["id"] for t in out["tokens"]] == hf.encode(text, add_special_tokens=False).ids
    assert "".join(t["text"] for t in out["tokens"]) == text  # no piece is half a character
    assert out["count"] == len(out["tokens"]) and out["bytes"] == len(text.encode())
    facts = labelled(sections(client, "03", "facts")[1])
    assert facts["vocabulary size"] == "512"
    too_long = client.post("/api/tokenize", json={"text": "a" * 20_001})
    assert too_long.status_code == 400 and "at most" in too_long.json()["error"]


def test_architecture_and_parameters(client, tiny_run):
    from tokenmill.model.anatomy import tensor_rows
    from tokenmill.model.config import read_config

    arch = sections(client, "04", "architecture")[0]
    assert arch["config"] == json.loads((tiny_run / "04_model" / "model.json").read_text())
    facts = labelled(sections(client, "04", "facts")[1])
    total = sum(r["params"] for r in tensor_rows(read_config(tiny_run / "04_model" / "model.json")))
    assert facts["parameters in all"] == f"{total:,}"


def test_pretraining_checkpoints_and_golden(client):
    table = titled(sections(client, "05", "table"), "checkpoints (golden ones are kept for good)")
    assert [(r[0], r[1]) for r in table["rows"]] == [("regular", "3"), ("golden", "6"), ("regular", "6")]
    loss = svg_root(client, "/api/chart/05/loss.svg")
    assert loss.findall(".//{http://www.w3.org/2000/svg}path")


def test_attention_probabilities(client, tiny_run):
    out = client.post("/api/attention", json={"model": "pretrained", "prompt": "The river carries cold water."}).json()
    assert out["tokens"][0] == "<|bos|>" and "".join(out["tokens"][1:]) == "The river carries cold water."
    assert (out["layers"], out["heads"]) == (4, 4)
    svg_root(client, "/api/attention.svg?model=pretrained&prompt=The%20river%20carries%20cold%20water.&layer=3")
    assert client.get("/api/attention.svg?model=pretrained&prompt=x&layer=4").status_code == 400
    assert client.post("/api/attention", json={"model": "../05_pretrain", "prompt": "x"}).status_code == 400

    from tokenmill.explorer.live import Live

    _, probs = Live(tiny_run).attention("pretrained", "The river carries cold water.")
    n = probs.shape[-1]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)  # each query's attention is a distribution
    assert np.all(probs[..., np.triu_indices(n, 1)[0], np.triu_indices(n, 1)[1]] == 0)  # and causal


def test_quantization_table(client, tiny_run):
    rows = json.loads((tiny_run / "08_quantize" / "eval.json").read_text())
    table = titled(sections(client, "08", "table"), "quantization: size, perplexity, speed")
    assert [r[0] for r in table["rows"]] == list(rows) == ["fp32", "bf16", "int8", "int4-rtn", "int4-gptq", "int4-awq"]
    assert [r[3] for r in table["rows"]] == [f"{r['perplexity']:,.4g}" for r in rows.values()]
    engine = sections(client, "08", "engine")[0]
    assert engine["attached"] is False


def test_alignment_of_the_run(client, tiny_run):
    summary = json.loads((tiny_run / "06_align" / "summary.json").read_text())
    found = sections(client, "06")
    brief = labelled(titled(found, "your run, in brief"))
    assert brief["reward model accuracy"] == f"{summary['rm_accuracy']:.0%}" and "methods" not in brief
    figures = {s["title"]: s["files"] for s in found if s["type"] == "figures"}
    assert figures == {
        "supervised fine-tuning (SFT): charts": ["06_align/sft/accuracy.svg", "06_align/sft/loss.svg"],
        "reward model: charts": ["06_align/rm/accuracy.svg", "06_align/rm/loss.svg"],
        "direct preference optimisation (DPO): charts": ["06_align/dpo/accuracy.svg", "06_align/dpo/loss.svg", "06_align/dpo/rewards.svg"],
        "reinforcement learning (PPO): charts": ["06_align/ppo/kl.svg", "06_align/ppo/kl_coef.svg", "06_align/ppo/policy.svg",
                                              "06_align/ppo/reward.svg"]}
    for files in figures.values():
        for path in files:
            svg_root(client, f"/api/file?path={path}")


def test_alignment_not_run_then_drawn_from_its_folder(tmp_path):
    (tmp_path / "run").mkdir()
    found = sections(TestClient(explorer_app(tmp_path / "run"), base_url=LOCAL), "06")
    assert [s["type"] for s in found] == ["idea", "note"]  # what the stage is for, even before it runs
    assert found[1]["text"] == "not run: 06_align is not in this run folder yet"
    # The folder layout stage 06 writes, filled by hand here: the panel must show what it holds.
    root = tmp_path / "run" / "06_align"
    drawn = {"sft": ["loss.svg"], "rm": ["accuracy.svg", "loss.svg"], "dpo": [], "ppo": ["kl.svg", "reward.svg"]}
    for method, names in drawn.items():
        (root / method).mkdir(parents=True)
        for name in names:
            (root / method / name).write_text(line_chart(name, [("x", [(0, 1.0), (1, 2.0)])]))
        (root / method / "summary.json").write_text(json.dumps({"steps": 5}))
    (root / "cai").mkdir()
    (root / "cai" / "critiques.jsonl").write_text(json.dumps(
        {"prompt": "hi", "original": "rude", "critique": "it is rude", "revision": "polite"}) + "\n")
    (root / "summary.json").write_text(json.dumps({"rm_accuracy": 0.9}))
    c = TestClient(explorer_app(tmp_path / "run"), base_url=LOCAL)
    found = sections(c, "06")
    figures = {s["title"]: s["files"] for s in found if s["type"] == "figures"}
    assert figures == {"supervised fine-tuning (SFT): charts": ["06_align/sft/loss.svg"],
                       "reward model: charts": ["06_align/rm/accuracy.svg", "06_align/rm/loss.svg"],
                       "reinforcement learning (PPO): charts": ["06_align/ppo/kl.svg", "06_align/ppo/reward.svg"]}
    assert not [s for s in found if s["type"] == "chart"]  # the explorer draws none of its own
    for files in figures.values():
        for path in files:
            svg_root(c, f"/api/file?path={path}")
    cai = next(s for s in found if s["type"] == "samples")["groups"][0]["items"][0]
    assert cai["parts"] == [["prompt", "hi"], ["original", "rude"], ["critique", "it is rude"], ["revision", "polite"]]
    assert c.get("/api/chart/06/sft-loss.svg").status_code == 404


def test_a_rerun_of_pretraining_shows_its_own_steps_not_the_last_runs(tmp_path):
    run = tmp_path / "run"
    for folder, steps in (("05_pretrain", range(0, 300, 50)), ("05_pretrain.work", range(0, 30, 10))):
        (run / folder).mkdir(parents=True)
        (run / folder / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0, "lr": 1e-3}) + "\n" for s in steps))
    (run / "05_pretrain" / "report.json").write_text(json.dumps({"steps": 300, "final": {"val_loss": 4.4}}))
    c = TestClient(explorer_app(run), base_url=LOCAL)

    for name in ("loss.svg", "lr.svg", "grad_norm.svg"):  # the finished run's figures
        (run / "05_pretrain" / name).write_text(line_chart(name, [("x", [(0, 1.0), (300, 2.0)])]))

    def shown(status: str) -> tuple[list, str, list]:
        (run / "manifest.json").write_text(json.dumps({"stages": {"05_pretrain": {"status": status}}}))
        found = sections(c, "05")
        notes = [x["text"] for x in found if x["type"] == "note"]
        steps = labelled(next(x for x in found if x["type"] == "facts" and x["title"] == "your run")).get("optimizer steps")
        images = [x["src"] for x in found if x["type"] == "chart"] + [f for x in found if x["type"] == "figures"
                                                                     for f in x["files"]]
        return notes, steps, images

    notes, steps, images = shown("running")  # `--from 05` re-runs: the finished folder stays until the new one replaces it
    assert "training is in progress: the charts show the steps logged so far" in notes and steps is None
    # The charts are drawn live from the steps logged so far; the last run's files are not shown.
    assert images == ["chart/05/loss.svg", "chart/05/lr.svg", "chart/05/grad_norm.svg"]
    for src in images:
        svg_root(c, f"/api/{src}")
    (run / "05_pretrain.work" / "metrics.jsonl").write_text("")
    assert c.get("/api/chart/05/loss.svg").status_code == 404  # no step logged yet
    notes, steps, images = shown("done")
    assert not any("in progress" in n for n in notes) and steps == "300"
    assert images == ["file?path=05_pretrain%2Floss.svg", "file?path=05_pretrain%2Flr.svg", "file?path=05_pretrain%2Fgrad_norm.svg"]


def test_files_only_from_inside_the_run(client, tiny_run, tmp_path):
    assert client.get("/api/file", params={"path": "config.yaml"}).status_code == 200
    outside = tmp_path / "secret.json"
    outside.write_text('{"secret": 1}')
    (tiny_run / "link.json").symlink_to(outside)
    try:
        refused = ["../secret.json", str(outside), "/etc/passwd", "01_data/../../secret.json", "link.json",
                   "05_pretrain/model/model.safetensors", "no/such.json", "..\\config.yaml", ""]
        for path in refused:
            r = client.get("/api/file", params={"path": path})
            assert r.status_code in (403, 422), (path, r.status_code)
            assert "\"secret\": 1" not in r.text
    finally:
        (tiny_run / "link.json").unlink()
    assert client.get("/static/..%2fapp.py").status_code == 404
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"


def test_mounted_on_the_server_with_live_engine(tiny_run, one_thread):
    from tokenmill.deploy.serve.engine import AsyncEngine, Engine, EngineConfig
    from tokenmill.deploy.serve.server import create_app
    from tokenmill.model import load_model
    from tokenmill.tokenizer import Tokenizer

    folder = latest_model(tiny_run)
    engine = AsyncEngine(Engine(load_model(folder, device="cpu"), Tokenizer.load(folder), EngineConfig(num_blocks=33)))
    app = mount_explorer(create_app(engine, "tiny"), tiny_run)
    with TestClient(app, base_url=LOCAL) as c:
        assert c.get("/explorer", follow_redirects=False).headers["location"] == "/explorer/"
        assert c.get("/explorer/").status_code == 200
        before = c.get("/explorer/api/engine").json()
        assert before["attached"] and before["model"] == "tiny" and before["chat_url"] == "/v1/chat/completions"
        assert (before["blocks_total"], before["blocks_used"], before["running"], before["waiting"]) == (32, 0, 0, 0)
        assert before["blocks"] == [0] * 32
        answer = c.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                       "max_tokens": 8, "temperature": 0}).json()
        after = c.get("/explorer/api/engine").json()
        assert after["generated_tokens"] == answer["usage"]["completion_tokens"] >= 1
        assert after["prompt_tokens"] == answer["usage"]["prompt_tokens"]
        assert after["blocks_used"] == 0  # the finished request gave its blocks back
        assert after["blocks_cached_free"] >= answer["usage"]["prompt_tokens"] // 16  # its full prompt blocks stay findable
        chat = next(s for s in c.get("/explorer/api/panel/08").json()["sections"] if s["type"] == "chat")
        assert chat["attached"] and chat["model"] == "tiny"
    # Beside an API that asks for a key, the explorer asks for the same key.
    engine = AsyncEngine(Engine(load_model(folder, device="cpu"), Tokenizer.load(folder), EngineConfig(num_blocks=33)))
    keyed = mount_explorer(create_app(engine, "tiny", api_key="secret"), tiny_run, path="/explorer")
    with TestClient(keyed, base_url=LOCAL) as c:
        for path in ("/explorer/", "/explorer/api/run", "/explorer/api/engine", "/v1/models", "/metrics"):
            assert c.get(path).status_code == 401, path
            assert c.get(path, headers={"Authorization": "Bearer secret"}).status_code == 200, path


def test_the_host_header_must_name_this_machine(tiny_run):
    """DNS rebinding: a page on attacker.example that resolves its name to 127.0.0.1 is still refused."""
    app = explorer_app(tiny_run, allowed_hosts=["explorer.example"])
    for base in ("http://attacker.example", "http://attacker.example:8000", "http://127.0.0.1.attacker.example"):
        r = TestClient(app, base_url=base).get("/api/run")
        assert r.status_code == 421 and r.json()["error"]["code"] == "invalid_host", base
    for base in (LOCAL, "http://127.0.0.1:8000", "http://[::1]:8000", "http://explorer.example:8000"):
        assert TestClient(app, base_url=base).get("/api/run").status_code == 200, base


def test_a_post_must_be_json(client):
    """No cross-site form or simple request: a POST without a JSON Content-Type is refused before any route."""
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        r = client.post("/api/tokenize", content='{"text": "hello"}', headers={"Content-Type": content_type})
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    assert client.post("/api/tokenize", json={"text": "hello"}).status_code == 200


def test_with_a_key_every_route_needs_it_and_a_browser_keeps_it_as_a_cookie(tiny_run):
    app = explorer_app(tiny_run, api_key="explorer-key")
    c = TestClient(app, base_url=LOCAL)
    for path in ("/", "/api/run", "/api/panel/01", "/static/explorer.js"):
        assert c.get(path).status_code == 401, path
    assert c.post("/api/tokenize", json={"text": "x"}).status_code == 401
    assert c.get("/api/run", headers={"Authorization": "Bearer explorer-key"}).status_code == 200
    assert c.get("/", params={"key": "wrong"}).status_code == 401
    login = c.get("/", params={"key": "explorer-key"}, follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/"
    # The client now holds the cookie, as a browser would: the page and its requests pass.
    assert c.get("/").status_code == 200 and c.get("/api/run").status_code == 200
    assert c.post("/api/tokenize", json={"text": "x"}).status_code == 200


def test_explore_refuses_another_address_without_a_key(tmp_path):
    import argparse

    from tokenmill.explorer import cli

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    for host in ("0.0.0.0", "192.168.1.5", "::"):
        args = parser.parse_args(["explore", str(tmp_path / "missing"), "--host", host])
        with pytest.raises(TokenmillError, match="--api-key"):
            args.func(args)
    # With a key, or on loopback, it goes on (here to the missing run folder).
    for extra in (["--host", "0.0.0.0", "--api-key", "k"], ["--host", "127.0.0.1"], ["--host", "localhost"]):
        args = parser.parse_args(["explore", str(tmp_path / "missing"), *extra])
        with pytest.raises(TokenmillError, match="run folder not found"):
            args.func(args)
