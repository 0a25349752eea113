"""The explorer in headless Chromium (Debian's `chromium`, driven by Playwright), over a small
run made by the test and served as `tokenmill explore` serves it: the page beside the API.

Set TOKENMILL_SCREENSHOTS=DIR to keep a screenshot of every panel."""

import os
import time
from pathlib import Path

import httpx
import pytest
from explorer_run import MARKUP, ServerThread

from tokenmill.explorer.cli import build_app

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
    page.click("summary:has-text('exact_dedup.duplicate')")
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
