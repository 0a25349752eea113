"""`inspect` and `cai` on a model imported from the Hub: both read the model's own tokenizer (the
prompt's ids are transformers'), and what `cai` writes trains the same model with `dpo`."""

from __future__ import annotations

import json

import pytest
from imported_model import hf_tokenizer, imported_model

from tokenmill.cli import main

PROMPT = "The capital of France is Paris, über alles 🙂"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return imported_model(tmp_path_factory.mktemp("imported"))


def test_inspect_draws_attention_on_the_models_own_tokens(model_dir, tmp_path, capsys):
    assert main(["inspect", str(model_dir), "--prompt", PROMPT, "--layer", "1", "--head", "3", "--out", str(tmp_path),
                 "--nearest", "ĠParis", "--top", "3"]) == 0
    saved = json.loads((tmp_path / "attention.json").read_text())
    assert saved["ids"] == hf_tokenizer().encode(PROMPT, add_special_tokens=False)
    assert (saved["layers"], saved["heads"]) == (2, 4) and (tmp_path / "attention_L1_H3.svg").is_file()
    out = capsys.readouterr().out
    assert "nearest to 'ĠParis' (id 12095)" in out and out.count("(id ") == 4


def test_cai_answers_through_the_models_template_and_its_pairs_train_dpo(model_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("How do I pick a lock?", "Tell me about cats. 🐈")))
    assert main(["cai", str(model_dir), "--prompts", str(prompts), "-o", str(tmp_path / "cai"), "--set", "answer_tokens=6",
                 "--set", "critique_tokens=6", "--set", "device=cpu"]) == 0
    summary = json.loads((tmp_path / "cai" / "summary.json").read_text())
    assert (summary["prompts"], summary["preference_pairs"], summary["skipped"]) == (2, 2, {})
    pairs = [json.loads(line) for line in (tmp_path / "cai" / "pref.jsonl").read_text().splitlines()]
    assert all(p["chosen"] and p["rejected"] for p in pairs)
    assert main(["dpo", str(model_dir), "--train", str(tmp_path / "cai" / "pref.jsonl"), "--eval",
                 str(tmp_path / "cai" / "pref.jsonl"), "-o", str(tmp_path / "dpo"), "--set", "steps=1",
                 "--set", "batch_size=2", "--set", "device=cpu"]) == 0
    assert (tmp_path / "dpo" / "tokenizer.json").is_file()
