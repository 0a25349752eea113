"""SFT: the loss sees assistant tokens only, packing changes nothing, and training learns."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tokenmill.align.data import Conversation
from tokenmill.align.packing import make_batches, pack_rows, pad_batch, pair_batches
from tokenmill.align.sft import SftConfig, encode_conversations, sft_loss, train_sft
from tokenmill.model.io import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

CONVERSATIONS = [
    Conversation([{"role": "user", "content": "What does the command wibble do?"},
                  {"role": "assistant", "content": "wibble: Print a line of wibbles."}]),
    Conversation([{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": "What is bisect.insort for?"},
                  {"role": "assistant", "content": "bisect.insort: Insert item x in list a, and keep it sorted."},
                  {"role": "user", "content": "And heapq.heappush?"},
                  {"role": "assistant", "content": "heapq.heappush: Push item onto heap."}]),
    Conversation([{"role": "user", "content": "Explain shlex.split in one sentence."},
                  {"role": "assistant", "content": "shlex.split: Split the string s using shell-like syntax."}]),
    Conversation([{"role": "user", "content": "What does plonk do?"}, {"role": "assistant", "content": "Drops a file."}]),
    Conversation([{"role": "user", "content": "Name a heap function."}, {"role": "assistant", "content": "heapq.heapify"},
                  {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "heapq.nsmallest"}]),
]


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir, device="cpu")


@pytest.fixture(scope="module")
def examples(tokenizer):
    return encode_conversations(tokenizer, CONVERSATIONS, 96)[0]


def test_loss_mask_covers_assistant_turns_only(tokenizer, examples):
    ids, mask = examples[1]  # system, user, assistant, user, assistant
    trained = tokenizer.decode([i for i, m in zip(ids, mask) if m])
    assert trained == (
        "bisect.insort: Insert item x in list a, and keep it sorted.<|end|>heapq.heappush: Push item onto heap.<|end|>"
    )


def test_loss_is_the_cross_entropy_of_the_assistant_tokens(tokenizer, model, examples):
    batch = pad_batch(examples, tokenizer.pad_id)
    with torch.no_grad():
        loss, _ = sft_loss(model, batch)
        logits = model(batch.input_ids)[:, :-1]
    targets = batch.input_ids[:, 1:].masked_fill(batch.loss_mask[:, 1:] == 0, -100)
    expected = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)


def test_changing_a_prompt_tokens_target_changes_nothing(tokenizer, model, examples):
    batch = pad_batch(examples, tokenizer.pad_id)
    with torch.no_grad():
        loss, _ = sft_loss(model, batch)
        prompt = (batch.loss_mask == 0) & (batch.attention_mask == 1)
        prompt[:, 0] = False
        changed = batch.labels.clone()
        changed[prompt] = (changed[prompt] + 7) % model.config.vocab_size  # every prompt target replaced
        batch.labels = changed
        assert torch.equal(sft_loss(model, batch)[0], loss)
        answer = batch.loss_mask.nonzero()[3]  # one assistant token: its target does count
        changed[answer[0], answer[1]] = (changed[answer[0], answer[1]] + 7) % model.config.vocab_size
        assert sft_loss(model, batch)[0] != loss


def test_packed_and_padded_batches_give_the_same_loss(tokenizer, model, examples):
    with torch.no_grad():
        padded, _ = sft_loss(model, pad_batch(examples, tokenizer.pad_id))
        [packed_batch] = make_batches(examples, tokenizer.pad_id, rows=8, seq_len=96, packing=True)
        assert packed_batch.input_ids.shape[0] < len(examples)  # several conversations share a row
        assert int(packed_batch.segment_ids.max()) >= 2
        packed, _ = sft_loss(model, packed_batch)
    assert abs(packed.item() - padded.item()) < 1e-5
    # and the gradients agree too
    grads = []
    for batch in (pad_batch(examples, tokenizer.pad_id), packed_batch):
        model.zero_grad()
        sft_loss(model, batch)[0].backward()
        grads.append(model.layers[0].attn.wqkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-4)


def test_first_fit_decreasing_packs_every_example_once_within_the_row():
    examples = [([1] * n, [0] + [1] * (n - 1)) for n in (50, 30, 20, 60, 10, 40, 90)]
    rows = pack_rows(examples, 100)
    assert sorted(i for row in rows for i in row) == list(range(len(examples)))
    assert all(sum(len(examples[i][0]) for i in row) <= 100 for row in rows)
    assert len(rows) == 3  # 300 tokens in rows of 100: no room wasted here


def test_pair_batches_group_pairs_by_length_and_keep_each_pair_together():
    # Pair k: a chosen answer of length 5 + (7k mod 41) tokens and a rejected one 3 longer, all ids k.
    pairs = [(([k] * (5 + 7 * k % 41), [1] * (5 + 7 * k % 41)), ([k] * (8 + 7 * k % 41), [1] * (8 + 7 * k % 41)))
             for k in range(1, 61)]

    def padding(batches):
        return sum(int((b.attention_mask == 0).sum()) for b in batches) / sum(b.input_ids.numel() for b in batches)

    grouped, plain = pair_batches(pairs, 0, 4, length_window=5), pair_batches(pairs, 0, 4, length_window=1)
    for batches in (grouped, plain):
        rows = [b.input_ids[r] for b in batches for r in range(len(b.input_ids))]
        assert sorted(int(r[0]) for r in rows) == sorted(2 * list(range(1, 61)))  # every answer once
        for b in batches:  # chosen row i and rejected row n + i are the same pair
            n = len(b.input_ids) // 2
            assert torch.equal(b.input_ids[:n, 0], b.input_ids[n:, 0])
    # The first window (pairs 1-20) is cut by length: its first batch holds its 4 longest pairs.
    assert sorted(int(i) for i in grouped[0].input_ids[:4, 0]) == sorted(sorted(range(1, 21), key=lambda k: -(7 * k % 41))[:4])
    assert [int(b.input_ids[0, 0]) for b in plain] == list(range(1, 61, 4))  # length_window=1: the given order
    assert padding(grouped) < padding(plain) / 2


@pytest.mark.parametrize("packing", [True, False])
def test_train_sft_learns_the_answers_and_writes_a_model_folder(packing, tokenizer, model_dir, tmp_path):
    train = CONVERSATIONS * 6
    config = SftConfig(steps=30, batch_size=4, lr=1e-2, warmup_steps=3, eval_every=10, samples=1, sample_tokens=8,
                       packing=packing, device="cpu")
    summary = train_sft(config, model_dir, train, CONVERSATIONS, tmp_path / "sft")
    out = tmp_path / "sft"
    assert summary["eval_loss"] < 0.6 * summary["eval_loss_before"]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert {"eval_loss", "eval_token_accuracy"} <= metrics[9].keys()
    assert json.loads((out / "summary.json").read_text())["steps"] == 30
    assert (out / "loss.svg").is_file() and (out / "tokenizer.json").is_file()
    tuned = load_model(out, device="cpu")
    assert not torch.equal(tuned.tok_embeddings.weight, load_model(model_dir, device="cpu").tok_embeddings.weight)
    assert summary["samples"][0]["reference"] == CONVERSATIONS[0].messages[1]["content"]


def run_cli(*argv: str) -> int:
    import argparse

    from tokenmill.align.cli import register

    parser = argparse.ArgumentParser(prog="tokenmill")
    register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_sft_verb_holds_out_part_of_the_training_file(model_dir, tmp_path, capsys):
    from tokenmill.align.data import conversation_record, write_jsonl
    from tokenmill.errors import ConfigError

    write_jsonl(tmp_path / "train.jsonl", [conversation_record(c) for c in CONVERSATIONS * 4])
    out = tmp_path / "out"
    assert run_cli("sft", str(model_dir), "--train", str(tmp_path / "train.jsonl"), "-o", str(out),
                   "--set", "steps=2", "--set", "sft.samples=0", "--set", "device=cpu", "--eval-fraction", "0.25") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["steps"], summary["train_conversations"], summary["eval_conversations"]) == (2, 15, 5)
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    with pytest.raises(ConfigError, match="unknown setting 'stpes'"):
        run_cli("sft", str(model_dir), "--train", str(tmp_path / "train.jsonl"), "-o", str(out), "--set", "stpes=2")


@pytest.mark.parametrize("arch", [
    dict(position="rope"), dict(position="alibi"), dict(position="learned", norm="layernorm", mlp="gelu"),
    dict(position="sinusoidal"), dict(position="rope", sliding_window=3),
])
def test_segment_ids_make_a_packed_row_compute_its_examples_alone(arch):
    from tokenmill.model.config import ModelConfig
    from tokenmill.model.transformer import Transformer, segment_positions

    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=50, context_length=32, d_model=32, n_layers=2, n_heads=4, **arch)).eval()
    parts = [torch.randint(0, 50, (1, n)) for n in (5, 7, 4)]
    segments = torch.cat([torch.full((1, p.shape[1]), i) for i, p in enumerate(parts)], dim=1)
    with torch.no_grad():
        packed = model(torch.cat(parts, dim=1), segment_ids=segments)
        alone = torch.cat([model(p) for p in parts], dim=1)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)
    assert segment_positions(segments).tolist() == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3]]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_fine_tune_like_fp32(precision, model_dir, tmp_path):
    def losses(name: str, precision: str) -> list[float]:
        config = SftConfig(steps=4, batch_size=4, lr=1e-2, warmup_steps=1, eval_every=4, samples=0,
                           precision=precision, device="cpu")
        train_sft(config, model_dir, CONVERSATIONS * 2, CONVERSATIONS, tmp_path / name)
        return [json.loads(line)["loss"] for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]

    fp32, half = losses("fp32", "fp32"), losses(precision, precision)
    assert fp32 != half  # autocast did change the arithmetic
    assert max(abs(a - b) for a, b in zip(fp32, half)) < 0.05


def test_a_hub_tokenizers_template_gives_the_ids_and_the_assistant_mask(hub_tokenizer, hub_tokenizer_dir):
    from transformers import AutoTokenizer

    [(ids, mask)] = encode_conversations(hub_tokenizer, CONVERSATIONS[1:2], 200)[0]
    assert ids == AutoTokenizer.from_pretrained(str(hub_tokenizer_dir)).apply_chat_template(
        CONVERSATIONS[1].messages, tokenize=True)["input_ids"]
    assert hub_tokenizer.decode([i for i, m in zip(ids, mask) if m]) == (
        "bisect.insort: Insert item x in list a, and keep it sorted.<|eot_id|>heapq.heappush: Push item onto heap.<|eot_id|>"
    )


def test_train_sft_keeps_a_hub_models_tokenizer(hub_model_dir, hub_tokenizer, tmp_path):
    from tokenmill.tokenizer import Tokenizer

    config = SftConfig(steps=3, batch_size=4, lr=1e-2, warmup_steps=1, eval_every=3, samples=1, sample_tokens=4, device="cpu")
    summary = train_sft(config, hub_model_dir, CONVERSATIONS * 2, CONVERSATIONS, tmp_path / "sft")
    assert summary["steps"] == 3 and summary["target_tokens"] > 0
    tuned = Tokenizer.load(tmp_path / "sft")
    assert (tuned.hash, tuned.stop_ids) == (hub_tokenizer.hash, {128001, 128009})  # generation_config.json travelled
