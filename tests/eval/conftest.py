"""A tiny model folder (a trained tokenizer and random weights) and tasks written here, for the
evaluation tests."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch

from tokenmill.model import ModelConfig, build_model, save_model
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document
from tokenmill.tokenizer import Tokenizer, TokenizerConfig, train_tokenizer

sys.path.insert(0, str(Path(__file__).parent.parent / "deploy"))  # LiveServer

# Contexts and continuations written for these tests; one context empty (the prefix token's case),
# one ending in a space (moved to the continuation), one long enough for two rolling windows.
SAMPLES = [
    {"context": "The function returns", "continuation": " a list of values."},
    {"context": "", "continuation": "Classes and instances."},
    {"context": "An exception is raised when ", "continuation": "the file is missing."},
    {"context": "The for statement iterates over", "continuation": " the items of a sequence."},
    {"context": "Names refer to objects. " * 12, "continuation": " Names are bound."},
]


@pytest.fixture(scope="session")
def samples() -> list[dict[str, str]]:
    """SAMPLES, as a fixture: `from conftest import` would find tests/deploy's conftest when both run."""
    return SAMPLES


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("eval_corpus")
    with ShardWriter(corpus) as writer:
        for i, name in enumerate(sorted(topics)[:12]):
            writer.write(Document(f"reference/{i}", topics[name][:3000], "reference"))
    tokenizer_dir = tmp_path_factory.mktemp("eval_tokenizer")
    train_tokenizer(writer.paths, TokenizerConfig(kind="bpe", vocab_size=400, min_frequency=2), tokenizer_dir)
    config = ModelConfig(vocab_size=Tokenizer.load(tokenizer_dir).vocab_size, context_length=96, d_model=64,
                         n_layers=2, n_heads=4, n_kv_heads=2, init_std=0.1)
    torch.manual_seed(0)
    out = save_model(build_model(config, device="cpu").eval(), tmp_path_factory.mktemp("eval_model") / "tiny")
    for f in tokenizer_dir.iterdir():
        shutil.copyfile(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> Path:
    """Three tasks over one JSONL file: log-likelihoods, rolling log-likelihoods, greedy generation."""
    folder = tmp_path_factory.mktemp("eval_tasks")
    data = folder / "samples.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES), encoding="utf-8")
    # Generation from an empty prompt is refused by the server (as by OpenAI's): those prompts have text.
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(s) + "\n" for s in SAMPLES if s["context"]), encoding="utf-8")
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / "tiny_ll.yaml").write_text(
        "task: tiny_ll\n" + common + "output_type: loglikelihood\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: '{{continuation}}'\ntarget_delimiter: ''\nmetric_list:\n  - metric: acc\n")
    (folder / "tiny_rolling.yaml").write_text(
        "task: tiny_rolling\n" + common + "output_type: loglikelihood_rolling\ndoc_to_text: ''\n"
        "doc_to_target: '{{context}}{{continuation}}'\nmetric_list:\n  - metric: word_perplexity\n")
    (folder / "tiny_gen.yaml").write_text(
        "task: tiny_gen\n" + common.replace(str(data), str(prompts)) + "output_type: generate_until\ndoc_to_text: '{{context}}'\n"
        "doc_to_target: '{{continuation}}'\ngeneration_kwargs:\n  until: ['.', 'the']\n  max_gen_toks: 12\n"
        "  do_sample: false\nmetric_list:\n  - metric: exact_match\n")
    return folder
