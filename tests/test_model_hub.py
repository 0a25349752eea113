"""`tokenmill convert org/name[@revision]`: Hub ids through the Hugging Face cache, never the internet.

The cache is laid out as `huggingface_hub` lays it (models--org--name/blobs/<hash>, snapshots/<commit>/
<file> linking to its blob, refs/<branch> holding the commit), and each conversion runs as its own
process, so that HF_HOME and HF_HUB_OFFLINE are read as a user's shell sets them. The Hub's refusals
(missing, gated, unknown revision) come from a local server that answers as the Hub does: an HTTP
status and its X-Error-Code header, from which huggingface_hub raises its own exceptions.
"""

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import transformers

from tokenmill.model.io import load_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKENIZER_FILES = {"tokenizer.json": '{"version": "1.0"}', "tokenizer_config.json": '{"eos_token": "</s>"}',
                   "special_tokens_map.json": "{}", "chat_template.jinja": "{{ messages }}"}

pytestmark = pytest.mark.usefixtures("one_thread")


def fill_cache(hf_home: Path, repo_id: str, files: dict[str, bytes], branch: str = "main") -> Path:
    """The cache a download of `repo_id` at `branch` (commit COMMIT) leaves under HF_HOME."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / branch).write_text(COMMIT)
    return snapshot


def convert(src: str, dst: Path, hf_home: Path, offline: bool = True, endpoint: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(PYTHONPATH=SRC, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    return subprocess.run([sys.executable, "-m", "tokenmill", "convert", src, str(dst), "--to", "tokenmill"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny Llama checkpoint's files (as a save_pretrained writes them) and its logits on fixed ids."""
    folder = tmp_path_factory.mktemp("hf")
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                      num_key_value_heads=2, num_hidden_layers=2, vocab_size=64)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
    files = {p.name: p.read_bytes() for p in folder.iterdir()}
    return {**files, **{k: v.encode() for k, v in TOKENIZER_FILES.items()}}, ids, logits


@pytest.mark.parametrize("revision", ["", "@" + COMMIT])  # the branch through refs/main, or the commit
def test_a_hub_id_converts_offline_from_the_cache(checkpoint, tmp_path, revision):
    files, ids, logits = checkpoint
    assert "generation_config.json" in files and "model.safetensors" in files
    fill_cache(tmp_path / "hf_home", "tiny-org/tiny-llama", files)
    result = convert("tiny-org/tiny-llama" + revision, tmp_path / "out", tmp_path / "hf_home")
    assert result.returncode == 0, result.stderr
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path / "out", device="cpu")(ids), logits, atol=1e-5, rtol=0)
    for name in (*TOKENIZER_FILES, "generation_config.json"):  # copied verbatim for the tokenizer side
        assert (tmp_path / "out" / name).read_bytes() == files[name]


def test_an_uncached_hub_id_offline_is_a_clear_error(tmp_path):
    result = convert("tiny-org/not-cached", tmp_path / "out", tmp_path / "hf_home")
    assert result.returncode != 0
    assert "tiny-org/not-cached is not in the Hugging Face cache and the Hub cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_a_repository_of_pickles_only_is_refused_by_name(checkpoint, tmp_path):
    files, _, _ = checkpoint
    fill_cache(tmp_path / "hf_home", "old-org/pickles", {"config.json": files["config.json"], "pytorch_model.bin": b"x"})
    result = convert("old-org/pickles", tmp_path / "out", tmp_path / "hf_home")
    assert result.returncode != 0
    assert "old-org/pickles has only pickled weights (pytorch_model.bin)" in result.stderr


def test_a_path_that_is_neither_a_folder_nor_a_hub_id(tmp_path):
    result = convert(str(tmp_path / "a" / "b" / "c"), tmp_path / "out", tmp_path / "hf_home")
    assert "is neither a folder nor a Hugging Face Hub id" in result.stderr


class HubRefusals(BaseHTTPRequestHandler):
    """Answers the model-info call as the Hub does for a missing repository, a gated one and an
    unknown revision."""

    def do_GET(self):
        if "/gated" in self.path:
            status, code, message = 403, "GatedRepo", "Access to model org/gated is restricted."
        elif "/revision/nope" in self.path:
            status, code, message = 404, "RevisionNotFound", "Invalid rev id: nope"
        else:
            status, code, message = 404, "RepoNotFound", "Repository not found"
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), HubRefusals)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("source,message", [
    ("org/missing", "no model org/missing on the Hugging Face Hub"),
    ("org/gated", "org/gated is a gated model: accept its conditions"),
    ("org/present@nope", "org/present has no revision 'nope'"),
])
def test_the_hubs_refusals_are_clear_errors(hub, tmp_path, source, message):
    result = convert(source, tmp_path / "out", tmp_path / "hf_home", offline=False, endpoint=hub)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
