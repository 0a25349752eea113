"""A tiny model imported from a Hugging Face folder: a random-weight Qwen2 carrying Qwen 3's real
tokenizer and chat template, converted with `tokenmill convert --to tokenmill`, as a user gets a
model from the Hub."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from hub_tokenizers import hub_tokenizer

from tokenmill.cli import main


def hf_tokenizer():
    transformers.logging.set_verbosity_error()
    return transformers.AutoTokenizer.from_pretrained(str(hub_tokenizer("qwen3")))


def imported_model(root: Path, seed: int = 0) -> Path:
    """The tokenmill model folder root/tm, converted from a Hugging Face folder root/hf."""
    tokenizer = hf_tokenizer()
    config = transformers.Qwen2Config(
        hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=128, tie_word_embeddings=True,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
    )
    torch.manual_seed(seed)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root / "hf")
    tokenizer.save_pretrained(root / "hf")
    assert main(["convert", str(root / "hf"), str(root / "tm"), "--to", "tokenmill"]) == 0
    return root / "tm"
