"""The explorer in headless Chromium (Debian's `chromium`, driven by Playwright), over a small
run made by the test and served as `tokenmill explore` serves it: the page beside the API.

Set TOKENMILL_SCREENSHOTS=DIR to keep a screenshot of every panel."""

import json
import os
import re
import time
from pathlib import Path

import httpx
import pytest
from explorer_run import EMAIL, MARKUP, ServerThread

from tokenmill.explorer.cli import build_app
from tokenmill.figures import human_bytes

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
TITLES = ["Training data", "Data processing", "Tokenization", "Architecture", "Pre-training", "Alignment",
          "Model weights", "Deployment", "Evaluation"]

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


@pytest.fixture(scope="module")
def server(tiny_run):
    app, model_dir = build_app(tiny_run)
    assert model_dir == tiny_run / "08_quantize" / "model"
    with ServerThread(app) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:  # Playwright gives the browser a fresh profile of its own
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector(".block")
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("TOKENMILL_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def wait_until(page, expression: str, timeout: float = 30.0) -> None:
    """Poll `expression` from here: the page's CSP forbids the eval that page.wait_for_function uses."""
    deadline = time.time() + timeout
    while not page.evaluate(expression):
        if time.time() > deadline:
            raise AssertionError(f"still false after {timeout} s: {expression}")
        time.sleep(0.05)


def open_block(page, number: str) -> None:
    page.click(f".block[data-block='{number}']")
    page.wait_for_selector(f".panel[data-block='{number}']")
    wait_until(page, "[...document.querySelectorAll('.panel img')].every(i => i.complete)")


def test_every_block_opens_with_its_figures(page):
    assert page.locator(".block .title").all_text_contents() == TITLES
    screenshot(page, "00-pipeline")
    for i, title in enumerate(TITLES, start=1):
        number = f"0{i}"
        open_block(page, number)
        panel = page.locator(".panel")
        assert panel.locator("h2").text_content().startswith(f"{number} · {title}")
        assert "[object" not in panel.text_content()  # every value became text, none a stray object
        if number != "07":
            assert panel.locator(".facts dt").count() > 0
        images = panel.locator("img")
        assert images.count() >= 1, number
        widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
        assert all(w > 0 for w in widths), (number, widths)  # every figure was drawn, none broken
        screenshot(page, f"{number}-{title.lower().replace(' ', '-')}")
    assert page.errors == []


def test_documents_are_shown_as_text(page):
    open_block(page, "02")
    page.click("summary:has-text('exact dedup: duplicate')")
    removed = page.locator(".pair .side.removed pre").first.text_content()
    assert MARKUP in removed  # the markup is visible as characters ...
    assert page.evaluate("window.pwned") is None  # ... and nothing of it ran
    assert page.locator(".pair img, .pair script").count() == 0
    assert page.locator(".pii").first.text_content() == "<EMAIL>"
    assert page.errors == []


def test_tokenizer_box(page, server):
    open_block(page, "03")
    text = "Tokens of café: 日本 🙂"
    page.fill("#tokenize-input", text)
    page.click("#tokenize-button")
    page.wait_for_selector("#tokenize-output .token")
    pieces = page.locator("#tokenize-output .token")
    expected = httpx.post(server.url + "/api/tokenize", json={"text": text}).json()
    assert pieces.evaluate_all("s => s.map(x => Number(x.dataset.id))") == [t["id"] for t in expected["tokens"]]
    assert "".join(pieces.all_text_contents()) == text
    colours = pieces.evaluate_all("s => s.map(x => x.style.backgroundColor)")
    assert all(a != b for a, b in zip(colours, colours[1:]))  # neighbours differ in colour
    screenshot(page, "03-tokenizer-box")
    assert page.errors == []


def test_attention_maps(page):
    open_block(page, "07")
    page.select_option("#attention-model", "pretrained")
    page.fill("#attention-prompt", "The river carries cold water.")
    page.select_option("#attention-layer", "2")
    page.click("#attention-button")
    page.wait_for_selector("#attention-output img")
    wait_until(page, "document.querySelector('#attention-output img').complete")
    assert page.locator("#attention-output img").evaluate("i => i.naturalWidth") > 0
    screenshot(page, "07-attention")
    assert page.errors == []


def test_chat_box_and_live_kv_cache(page, server):
    open_block(page, "08")
    page.wait_for_selector("#engine-stats dd")
    total = httpx.get(server.url + "/api/engine").json()["blocks_total"]
    assert f"of {total} (" in page.locator("#engine-stats").text_content()
    assert page.locator("#kv-grid .kv").count() == total

    page.fill("#chat-temperature", "0")
    page.fill("#chat-max-tokens", "12")
    page.fill("#chat-input", "What does the river carry?")
    page.click("#chat-send")
    page.wait_for_selector(".msg.assistant .reply")
    shown = page.locator(".msg.assistant .reply").text_content()
    model = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    direct = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": model, "messages": [{"role": "user", "content": "What does the river carry?"}],
        "temperature": 0, "max_tokens": 12}).json()
    assert shown == direct["choices"][0]["message"]["content"]  # greedy: the same answer
    usage = page.locator(".msg.assistant .usage").text_content()
    assert usage.startswith(f"{direct['usage']['completion_tokens']} tokens")
    wait_until(page, "Number(document.querySelector('#engine-stats dd:nth-of-type(7)').textContent) > 0")
    screenshot(page, "08-chat")
    assert page.errors == []


def test_path_traversal_is_refused(page, server):
    for path in ("../../../../etc/passwd", "/etc/passwd", "%2e%2e/config.yaml"):
        response = page.goto(f"{server.url}/api/file?path={path}")
        assert response.status == 403, path
        assert "root:" not in page.content()
    assert page.goto(f"{server.url}/api/file?path=config.yaml").status == 200


SNAKE_KEY = re.compile(r"\b[a-z]+_[a-z_]+\b")  # a key of a stats file, such as eval_reward_std
LABELS = "h2, h3, h4, dt, th, summary, figcaption, .label, .reading, .idea-text"


def test_each_panel_opens_with_the_idea_and_shows_no_bare_key(page):
    kv_per_user = 2 * 32 * 32 * 128 * 2 * 4096  # LLaMA-7B: K and V, layers, heads, head dims, bf16 bytes, tokens
    scale = {"04": "131 million", "05": "135 billion", "08": human_bytes(kv_per_user)}
    for number in (f"0{i}" for i in range(1, 9)):
        open_block(page, number)
        first = page.locator(".panel .section").first
        assert first.get_attribute("class") == "section section-idea", number
        assert len(first.locator(".idea-text").text_content()) > 100
        assert first.locator(".scale dt").count() >= 2
        if number in scale:
            assert scale[number] in first.text_content(), number
        labels = page.locator(".panel").locator(LABELS).all_text_contents()
        bare = [t for t in labels if SNAKE_KEY.search(t)]
        assert not bare, (number, bare)
    assert page.errors == []


def test_figures_carry_their_reading(page, tiny_run):
    rm = json.loads((tiny_run / "06_align" / "rm" / "summary.json").read_text())
    open_block(page, "06")
    dd = page.locator("dt:text-is('held-out accuracy') + dd").first.text_content()
    assert f"{rm['eval_accuracy']:.0%}" in dd and f"up from {rm['eval_accuracy_before']:.0%} before training" in dd


def follow_document(page, doc_id: str) -> None:
    page.fill("#follow-query", doc_id)
    page.press("#follow-query", "Enter")
    page.click(f".doc-choice[data-id='{doc_id}']")
    page.wait_for_selector("#follow-fate")


def test_follow_a_document_a_filter_removed_and_its_kept_copy(page, tiny_run):
    removals = [json.loads(line) for line in (tiny_run / "02_curate" / "removed.jsonl").read_text().splitlines()]
    copy = next(r for r in removals if r["reason"] == "exact_dedup.duplicate")
    rule = next(r for r in removals if r["block"].startswith("gopher"))  # a quality rule, not deduplication
    open_block(page, "02")
    follow_document(page, rule["id"])
    block, reason = rule["block"].replace("_", " "), rule["reason"].split(".", 1)[1].replace("_", " ")
    assert page.locator("#follow-fate").text_content().startswith(f"Removed by the {block} rule: {reason} ({rule['detail']})")
    follow_document(page, copy["id"])
    fate = page.locator("#follow-fate").text_content()
    assert fate.startswith("Removed by the exact dedup rule: duplicate") and copy["detail"] in fate
    assert page.locator("#follow-duplicates").text_content() == f"a copy of {copy['detail']}, which was kept in its place"
    assert page.locator("#follow-tokens, #follow-loss, #follow-mixture").count() == 0  # it goes no further
    screenshot(page, "02-follow-removed")

    follow_document(page, copy["detail"])  # the copy that was kept
    assert page.locator("#follow-fate").text_content().startswith("Kept")
    assert f"duplicate(s) removed: {copy['id']}" in page.locator("#follow-duplicates").text_content()
    assert MARKUP in page.locator(".step pre").first.text_content() and page.evaluate("window.pwned") is None
    assert page.locator("#follow-tokens .token").count() > 10
    heat = page.locator("#follow-loss .token")
    assert heat.count() > 10
    losses = heat.evaluate_all("s => s.map(x => parseFloat(x.title))")
    assert all(x >= 0 for x in losses) and len(set(losses)) > 1
    assert len(set(heat.evaluate_all("s => s.map(x => x.style.backgroundColor)"))) > 1  # a strip, not one colour
    kept = next(d for d in page.locator(".doc-choice").all_text_contents() if d.startswith(copy["detail"]))
    domain = kept.removeprefix(copy["detail"]).split()[0]
    mix = json.loads((tiny_run / "02_curate" / "mixture.json").read_text())["domains"][domain]
    assert f"weight {mix['weight']:g}, seen {mix['effective_repeats']:g}× per epoch" in page.locator("#follow-mixture").text_content()
    assert page.errors == []


def test_follow_a_kept_document_with_personal_data(page, tiny_run):
    from tokenmill.shards import read_shards, shard_paths

    contact = next(d.id for d in read_shards(shard_paths(tiny_run / "01_data" / "shards")) if EMAIL in d.text)
    open_block(page, "02")
    follow_document(page, contact)
    assert page.locator("#follow-fate").text_content().startswith("Kept")
    assert page.locator(".step .pii").first.text_content() == "<EMAIL>"
    assert "personal data redacted: 1 email" in page.locator(".panel").text_content()
    assert EMAIL not in page.locator("#follow-output").text_content().split("1 · raw document")[1].split("2 ·")[1]
    screenshot(page, "02-follow-kept")
    assert page.errors == []


def test_compare_the_models_on_one_prompt(page, server, tiny_run):
    open_block(page, "07")
    page.fill("#compare-prompt", "What does the river carry?")
    page.click("#compare-button")
    page.wait_for_selector("#compare-output .answer", timeout=120_000)
    answers = page.locator("#compare-output .answer")
    assert answers.evaluate_all("s => s.map(x => x.dataset.model)") == ["quantized", "dpo", "ppo", "sft", "pretrained"]
    for kind in ("greedy", "sampled"):
        labels = page.locator(f"#compare-output .answer-{kind} .label").all_text_contents()
        assert len(labels) == 5 and all(re.fullmatch(rf"{kind} · reward -?\d+\.\d\d", t) for t in labels), labels
    direct = httpx.post(server.url + "/api/compare", json={"prompt": "What does the river carry?"}, timeout=120).json()
    shown = page.locator("#compare-output .answer-greedy pre").all_text_contents()
    assert shown == [a["greedy"]["text"] or "(no text)" for a in direct["answers"]]  # greedy: the same answers
    screenshot(page, "07-compare")
    assert page.errors == []


def test_arrows_name_the_artifact_handed_on(page, tiny_run):
    arrows = page.locator("#pipeline .arrow.handoff")
    assert arrows.count() == 8
    first = arrows.first.text_content()
    documents = json.loads((tiny_run / "01_data" / "stats.json").read_text())["documents"]
    assert first.startswith("01_data/shards") and f"{documents:,} documents" in first
    size = human_bytes(sum(p.stat().st_size for p in (tiny_run / "01_data" / "shards").iterdir()))
    assert size in first
    params = json.loads((tiny_run / "04_model" / "params.json").read_text())["parameters"]["total"]
    assert f"{params:,} parameters" in arrows.nth(3).text_content()


def test_phone_width_keyboard_and_nothing_leaves_the_machine(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    page = context.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(server.url + "/")
    page.wait_for_selector(".block")
    page.focus(".block[data-block='01']")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    page.wait_for_selector(".panel[data-block='02']")
    wait_until(page, "[...document.querySelectorAll('.panel img')].every(i => i.complete)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing wider than the phone
    boxes = [page.locator(f".block[data-block='0{i}']").bounding_box() for i in (1, 2)]
    assert boxes[1]["y"] > boxes[0]["y"] + boxes[0]["height"]  # the blocks stack
    screenshot(page, "phone-02")
    assert requests and all(u.startswith(server.url + "/") for u in requests), requests
    context.close()
