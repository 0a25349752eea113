"""`tokenmill convert DIR DST --to hf --push org/name`: the exported folder uploaded to the Hub.

The Hub is a local server that answers the calls `huggingface_hub` makes for an upload as the Hub
does (create the repository, pre-upload, commit), telling the client to send every file inline in
the commit, and keeps what it receives. Each push runs as its own process with HF_ENDPOINT pointing
there, as a user's shell sets it."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from imported_model import imported_model

SRC = str(Path(__file__).resolve().parents[1] / "src")
TOKEN = "hf_write_token_for_the_test"

pytestmark = pytest.mark.usefixtures("one_thread")


class FakeHub(BaseHTTPRequestHandler):
    received: list[tuple[str, str | None, bytes]] = []  # (path, Authorization header, body)

    def _json(self, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.received.append((self.path, self.headers.get("Authorization"), body))
        root = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            self._json({"url": f"{root}/org/tiny", "name": "org/tiny"})
        elif "/preupload/" in self.path:
            self._json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                  for f in json.loads(body)["files"]]})
        elif "/commit/" in self.path:
            self._json({"commitUrl": f"{root}/org/tiny/commit/{'a' * 40}", "commitOid": "a" * 40})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return imported_model(tmp_path_factory.mktemp("imported"))


def push(model_dir: Path, dst: Path, hf_home: Path, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(PYTHONPATH=SRC, HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1", **env_vars)
    return subprocess.run([sys.executable, "-m", "tokenmill", "convert", str(model_dir), str(dst), "--to", "hf",
                           "--push", "org/tiny"], env=env, capture_output=True, text=True, timeout=300, check=False)


def committed_files(body: bytes) -> dict[str, bytes]:
    lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
    return {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}


def test_push_uploads_the_exported_folder_as_one_commit(hub, model_dir, tmp_path):
    FakeHub.received.clear()
    result = push(model_dir, tmp_path / "out", tmp_path / "hf_home", HF_ENDPOINT=hub, HF_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    assert f"pushed {tmp_path / 'out'} to org/tiny: {hub}/org/tiny/commit/" in result.stderr
    paths = [path for path, _, _ in FakeHub.received]
    assert paths[0] == "/api/repos/create" and paths[-1] == "/api/models/org/tiny/commit/main"
    assert json.loads(FakeHub.received[0][2]) == {"name": "tiny", "organization": "org", "visibility": "private"}
    assert {auth for _, auth, _ in FakeHub.received} == {f"Bearer {TOKEN}"}
    sent = committed_files(FakeHub.received[-1][2])
    written = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    assert sent == written  # every file of the folder, byte for byte
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(sent)


def test_push_offline_is_a_clear_error(hub, model_dir, tmp_path):
    FakeHub.received.clear()
    result = push(model_dir, tmp_path / "out", tmp_path / "hf_home", HF_ENDPOINT=hub, HF_TOKEN=TOKEN, HF_HUB_OFFLINE="1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot push to org/tiny: HF_HUB_OFFLINE is set" in result.stderr, result.stderr
    assert FakeHub.received == []
    assert (tmp_path / "out" / "config.json").is_file()  # the export itself is done


def test_push_without_a_token_is_a_clear_error(hub, model_dir, tmp_path):
    FakeHub.received.clear()
    result = push(model_dir, tmp_path / "out", tmp_path / "hf_home", HF_ENDPOINT=hub)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "cannot push to org/tiny: no Hugging Face token; set HF_TOKEN" in result.stderr, result.stderr
    assert FakeHub.received == []


def test_push_applies_to_export_only(model_dir, tmp_path):
    from tokenmill.cli import main

    assert main(["convert", str(model_dir), str(tmp_path / "x"), "--to", "tokenmill", "--push", "org/tiny"]) != 0
