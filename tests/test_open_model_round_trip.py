"""An open-weight model in and out: a Hugging Face folder is converted, fine-tuned and exported
back, and transformers reads the result as it reads any Hub model: the same logits, the same
chat ids from `apply_chat_template`, a generation config that stops at the end of a chat turn.
The same holds for a model tokenmill trained with its own tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from hub_tokenizers import hub_tokenizer
from safetensors.torch import load_file

from tokenmill.align.data import Conversation
from tokenmill.align.sft import SftConfig, train_sft
from tokenmill.cli import main
from tokenmill.model.config import ModelConfig
from tokenmill.model.io import build_model, copy_tokenizer, load_model, save_model
from tokenmill.tokenizer import Tokenizer

T = transformers

pytestmark = pytest.mark.usefixtures("one_thread")

CHATS = [
    Conversation([{"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"It is {2 * i}."}])
    for i in range(6)
]
QUESTION = [{"role": "system", "content": "You answer briefly."}, {"role": "user", "content": "And 3 + 3, über-quickly?"}]


@pytest.fixture(autouse=True, scope="module")
def quiet_transformers():
    transformers.logging.set_verbosity_error()


def fine_tune(model_dir: Path, out: Path) -> None:
    train_sft(SftConfig(steps=3, batch_size=2, seq_len=64, warmup_steps=1, device="cpu"), model_dir, CHATS[:-1], CHATS[-1:], out)


def check_transformers_reads(tokenmill_dir: Path, hf_dir: Path) -> list[int]:
    """transformers' model and tokenizer from `hf_dir` agree with tokenmill's on a chat prompt; its ids."""
    ours = Tokenizer.load(tokenmill_dir)
    theirs = T.AutoTokenizer.from_pretrained(str(hf_dir))
    ids = ours.encode_chat(QUESTION, add_generation_prompt=True).ids
    assert list(theirs.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True, return_dict=False)) == ids
    model = T.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():
        expected = load_model(tokenmill_dir, device="cpu")(torch.tensor([ids]))
        torch.testing.assert_close(model(torch.tensor([ids])).logits, expected, atol=1e-4, rtol=0)
    return ids


def test_hub_model_converted_fine_tuned_and_exported_loads_in_transformers(tmp_path):
    tokenizer = T.AutoTokenizer.from_pretrained(str(hub_tokenizer("qwen3")))
    config = T.Qwen2Config(hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2,
                           num_hidden_layers=2, vocab_size=len(tokenizer), max_position_embeddings=128,
                           tie_word_embeddings=True, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    torch.manual_seed(0)
    T.AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "hf")
    tokenizer.save_pretrained(tmp_path / "hf")

    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "tm"), "--to", "tokenmill"]) == 0
    fine_tune(tmp_path / "tm", tmp_path / "sft")
    assert main(["convert", str(tmp_path / "sft"), str(tmp_path / "out"), "--to", "hf"]) == 0

    before, after = load_file(tmp_path / "tm" / "model.safetensors"), load_file(tmp_path / "sft" / "model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)  # what is exported is the fine-tuned model
    check_transformers_reads(tmp_path / "sft", tmp_path / "out")
    generation = T.GenerationConfig.from_pretrained(tmp_path / "out")
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")


@pytest.fixture(scope="module")
def own_tokenizer_dir(tmp_path_factory) -> Path:
    from tokenmill.shards import ShardWriter, shard_paths
    from tokenmill.sources.document import Document
    from tokenmill.tokenizer import TokenizerConfig, train_tokenizer

    corpus, out = tmp_path_factory.mktemp("corpus"), tmp_path_factory.mktemp("tokenizer")
    with ShardWriter(corpus) as writer:
        for i in range(200):
            writer.write(Document(id=str(i), text=f"What is {i} + {i}? It is {2 * i}. You answer briefly.", source="web"))
    train_tokenizer(shard_paths(corpus), TokenizerConfig(kind="bpe", vocab_size=320), out)
    return out


def test_own_model_exports_its_tokenizer_chat_template_and_stop_ids(tmp_path, own_tokenizer_dir):
    tokenizer = Tokenizer.load(own_tokenizer_dir)
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2)
    save_model(build_model(config, device="cpu"), tmp_path / "tm")
    copy_tokenizer(own_tokenizer_dir, tmp_path / "tm")
    fine_tune(tmp_path / "tm", tmp_path / "sft")
    assert not (tmp_path / "sft" / "generation_config.json").exists()

    assert main(["convert", str(tmp_path / "sft"), str(tmp_path / "out"), "--to", "hf"]) == 0
    ids = check_transformers_reads(tmp_path / "sft", tmp_path / "out")
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.assistant_id
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": tokenizer.bos_id, "eos_token_id": [tokenizer.eos_id, tokenizer.end_id],
                          "pad_token_id": tokenizer.pad_id}
    # transformers' generate stops at the end of the chat turn: once <|end|> is out, only padding follows.
    model = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        bias = torch.zeros(tokenizer.vocab_size)
        bias[tokenizer.end_id] = 1e4  # the turn ends at once
        model.lm_head.bias = torch.nn.Parameter(bias)
        out = model.generate(torch.tensor([ids]), max_new_tokens=5, do_sample=False)
    assert out[0, len(ids):].tolist() == [tokenizer.end_id]
