"""`tokenmill quantize` on a model imported from the Hub: RTN, GPTQ and AWQ calibrated on documents
tokenized with the model's own tokenizer (or on token shards it encoded), into a folder that keeps
the tokenizer and chat template, loads and serves. Token shards of another tokenizer are refused."""

from __future__ import annotations

import pytest
import torch
from hub_tokenizers import hub_tokenizer
from imported_model import hf_tokenizer, imported_model

from tokenmill.cli import main
from tokenmill.deploy.serve.engine import EngineConfig
from tokenmill.deploy.serve.loading import load_engine
from tokenmill.model.io import load_model
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer import Tokenizer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Wie viel ist 3 + 3? 🙂"}]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_and_docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("imported")
    with ShardWriter(root / "docs") as writer:
        for i in range(40):
            writer.write(Document(id=str(i), text=f"Document {i}: the cat sat on mat number {i * 7}. Über alles, {i}!",
                                  source="web"))
    return imported_model(root), root / "docs"


def quantize(model_dir, out, method: str, calib) -> int:
    return main(["quantize", str(model_dir), "--method", method, "--calib", str(calib), "--samples", "4",
                 "--seq-len", "32", "--group-size", "32", "-o", str(out)])


@pytest.mark.parametrize("method", ["rtn4", "gptq", "awq"])
def test_an_imported_model_quantizes_and_serves_with_its_own_tokenizer(model_and_docs, tmp_path, method):
    model_dir, docs = model_and_docs
    assert quantize(model_dir, tmp_path / "q", method, docs) == 0
    prompt = hf_tokenizer().apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    assert Tokenizer.load(tmp_path / "q").encode_chat(MESSAGES, add_generation_prompt=True).ids == prompt
    assert (tmp_path / "q" / "generation_config.json").is_file()
    with torch.no_grad():
        ours, theirs = load_model(tmp_path / "q", device="cpu"), load_model(model_dir, device="cpu", dtype=torch.float32)
        ids = torch.tensor([prompt])
        assert torch.nn.functional.cosine_similarity(ours(ids).flatten().float(), theirs(ids).flatten(), dim=0) > 0.9
    engine = load_engine(tmp_path / "q", EngineConfig(num_blocks=8, block_size=16, max_num_seqs=2), device="cpu")
    assert engine.engine.tokenizer.encode_chat(MESSAGES, add_generation_prompt=True).ids == prompt


def test_calibration_shards_must_come_from_the_models_tokenizer(model_and_docs, tmp_path, capsys):
    model_dir, docs = model_and_docs
    assert main(["encode", "--tokenizer", str(model_dir), "--input", str(docs), "-o", str(tmp_path / "own"),
                 "--workers", "1"]) == 0
    assert quantize(model_dir, tmp_path / "q", "gptq", tmp_path / "own") == 0

    assert main(["encode", "--tokenizer", str(hub_tokenizer("llama3")), "--input", str(docs), "-o", str(tmp_path / "other"),
                 "--workers", "1"]) == 0
    assert quantize(model_dir, tmp_path / "q2", "gptq", tmp_path / "other") != 0  # ids of Llama 3's tokenizer
    assert "encoded with another tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "q2").exists()
