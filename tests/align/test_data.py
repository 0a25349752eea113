"""Loaders of conversations, preferences and prompts: every supported format, and bad records
counted with their file:line."""

from __future__ import annotations

import gzip
import json

import pytest

from tokenmill.align.data import (
    Conversation,
    Preference,
    conversation_record,
    encode_pair,
    load_conversations,
    load_preferences,
    load_prompts,
    preference_record,
    write_jsonl,
)
from tokenmill.errors import TokenmillError
from tokenmill.sources.document import SkipLog

USER_ASSISTANT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]


def write_lines(path, lines: list) -> str:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_alpaca_json_array_with_and_without_input(tmp_path):
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps([
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!", "system": "Be warm."},
    ]))
    a, b = load_conversations(path)
    assert a.messages == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"}, {"role": "assistant", "content": "5"}]
    assert b.messages == [{"role": "system", "content": "Be warm."}, {"role": "user", "content": "Say hi."},
                          {"role": "assistant", "content": "Hi!"}]


def test_sharegpt_openai_and_prompt_completion_lines(tmp_path):
    path = write_lines(tmp_path / "mixed.jsonl", [
        {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"},
                           {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]},
        {"messages": USER_ASSISTANT},
        {"prompt": "Name a colour.", "completion": "Blue."},
        {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]},
        {"instruction": "Do it.", "output": "Done."},
    ])
    convs = load_conversations(path)
    assert [len(c.messages) for c in convs] == [5, 2, 2, 2, 2]
    assert convs[0].messages[3] == {"role": "user", "content": "Q2"}
    assert convs[2].messages == [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]


def test_bad_records_are_counted_with_file_and_line(tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", [
        {"messages": USER_ASSISTANT},
        "{not json",
        {"text": "a pre-training document"},
        {"messages": [{"role": "assistant", "content": "I speak first"}, {"role": "user", "content": "No."}]},
        {"messages": [{"role": "user", "content": "Only a question"}]},
        [1, 2],
        "",
        {"conversations": [{"from": "alien", "value": "?"}]},
        {"messages": USER_ASSISTANT},
    ])
    skips = SkipLog()
    convs = load_conversations(path, skips)
    assert len(convs) == 2
    summary = skips.summary()
    assert summary["skipped_total"] == 6
    where = {r: [e["location"] for e in v["examples"]] for r, v in summary["skipped"].items()}
    assert where["malformed_json"] == [f"{path}:2"]
    assert where["not_a_conversation"] == [f"{path}:3", f"{path}:5", f"{path}:6", f"{path}:8"]
    assert where["invalid_conversation"] == [f"{path}:4"]
    assert "assistant turn before any user turn" in summary["skipped"]["invalid_conversation"]["examples"][0]["detail"]


def test_a_file_without_any_usable_record_is_refused(tmp_path, capsys):
    path = write_lines(tmp_path / "none.jsonl", [{"text": "x"}, "oops"])
    with pytest.raises(TokenmillError, match=r"none.jsonl: no usable conversation record; first problem at .*none.jsonl:2"):
        load_conversations(path)
    with pytest.raises(TokenmillError, match="not found"):
        load_conversations(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(TokenmillError, match="the file is empty"):
        load_preferences(tmp_path / "empty.jsonl")


def test_skips_are_printed_when_no_log_is_given(tmp_path, capsys):
    load_conversations(write_lines(tmp_path / "one_bad.jsonl", [{"messages": USER_ASSISTANT}, "{"]))
    assert "malformed_json" in capsys.readouterr().err


def test_preferences_in_trl_hh_and_conversation_formats(tmp_path):
    hh_chosen = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6."
    hh_rejected = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 7."
    path = tmp_path / "prefs.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for r in [
            {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Rome."},
            {"prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
             "chosen": [{"role": "assistant", "content": "good"}], "rejected": [{"role": "assistant", "content": "bad"}]},
            {"chosen": hh_chosen, "rejected": hh_rejected},
            {"chosen": USER_ASSISTANT, "rejected": [USER_ASSISTANT[0], {"role": "assistant", "content": "Go away."}]},
        ]:
            f.write(json.dumps(r) + "\n")
    a, b, hh, conv = load_preferences(path)
    assert a == Preference([{"role": "user", "content": "Capital of France?"}], "Paris.", "Rome.")
    assert b.prompt[0]["role"] == "system" and (b.chosen, b.rejected) == ("good", "bad")
    assert hh.prompt == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."},
                         {"role": "user", "content": "And 3+3?"}]
    assert (hh.chosen, hh.rejected) == ("6.", "7.")
    assert conv == Preference([USER_ASSISTANT[0]], "Hello.", "Go away.")


def test_bad_preferences_say_why(tmp_path):
    path = write_lines(tmp_path / "prefs.jsonl", [
        {"prompt": "Q", "chosen": "same", "rejected": "same"},
        {"chosen": "\n\nHuman: A\n\nAssistant: x", "rejected": "\n\nHuman: B\n\nAssistant: y"},
        {"prompt": "Q", "chosen": "x"},
        {"chosen": "no transcript", "rejected": "at all"},
        {"prompt": "Q", "chosen": "", "rejected": "y"},
        {"prompt": "Q", "chosen": "x", "rejected": "y"},
    ])
    skips = SkipLog()
    assert len(load_preferences(path, skips)) == 1
    details = [e["detail"] for e in skips.summary()["skipped"]["not_a_preference"]["examples"]]
    assert details[0] == "chosen and rejected are the same answer"
    assert "no shared prompt" in details[1]
    assert "needs 'chosen' and 'rejected'" in details[2]
    assert "transcript" in details[3]
    assert details[4] == "an empty answer"


def test_prompts(tmp_path):
    path = write_lines(tmp_path / "prompts.jsonl", [
        {"prompt": "Tell me a joke."},
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]},
        {"instruction": "Summarise.", "input": "Text."},
        {"messages": USER_ASSISTANT},  # ends with the assistant: not a prompt
    ])
    skips = SkipLog()
    prompts = load_prompts(path, skips)
    assert prompts == [[{"role": "user", "content": "Tell me a joke."}],
                       [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                       [{"role": "user", "content": "Summarise.\n\nText."}]]
    assert skips.summary()["skipped_total"] == 1


def test_given_files_compressed_or_not_are_copied_readable_into_the_run(tmp_path):
    import zstandard

    from tokenmill.align.config import AlignConfig
    from tokenmill.align.stage import SETS, prepare_data

    conv = {"messages": USER_ASSISTANT}
    pref = {"prompt": "Hi", "chosen": "Hello.", "rejected": "Bye."}
    given = {}
    for name in SETS:
        record = conv if name.startswith("sft") else pref if name.startswith("pref") else {"prompt": "Hi"}
        text = (json.dumps([record, record]) if name.endswith("eval") else json.dumps(record) + "\n") + "\n"
        path = tmp_path / f"{name}.jsonl"
        if name.startswith("sft"):
            path = path.with_suffix(".jsonl.gz")
            path.write_bytes(gzip.compress(text.encode()))
        elif name.startswith("pref"):
            path = path.with_suffix(".jsonl.zst")
            path.write_bytes(zstandard.ZstdCompressor().compress(text.encode()))
        else:
            path.write_text(text)
        given[name] = str(path)
    data_dir = tmp_path / "run"
    data_dir.mkdir()
    stats = prepare_data(AlignConfig(data=given), [], data_dir)
    assert stats == {"given": given}  # nothing built from the corpus
    assert load_conversations(data_dir / "sft_train.jsonl") == [Conversation(USER_ASSISTANT)]
    assert len(load_conversations(data_dir / "sft_eval.jsonl")) == 2
    assert load_preferences(data_dir / "pref_train.jsonl")[0].chosen == "Hello."
    assert load_prompts(data_dir / "prompts_eval.jsonl") == [[{"role": "user", "content": "Hi"}]] * 2


def test_written_records_read_back(tmp_path):
    convs = [Conversation(USER_ASSISTANT), Conversation([{"role": "system", "content": "S"}, *USER_ASSISTANT])]
    prefs = [Preference([USER_ASSISTANT[0]], "Hello.", "Bye.", {"item": "greeting"})]
    write_jsonl(tmp_path / "c.jsonl", [conversation_record(c) for c in convs])
    write_jsonl(tmp_path / "p.jsonl", [preference_record(p) for p in prefs])
    assert load_conversations(tmp_path / "c.jsonl") == convs
    [p] = load_preferences(tmp_path / "p.jsonl")
    assert (p.prompt, p.chosen, p.rejected) == (prefs[0].prompt, "Hello.", "Bye.")


def test_encoded_pair_trains_only_the_answer(tokenizer):
    chosen, rejected = encode_pair(tokenizer, Preference([{"role": "user", "content": "Q?"}], "Yes.", "No way."))
    assert tokenizer.decode([i for i, m in zip(chosen.ids, chosen.loss_mask) if m]) == "Yes.<|end|>"
    assert tokenizer.decode([i for i, m in zip(rejected.ids, rejected.loss_mask) if m]) == "No way.<|end|>"
    n_prompt = chosen.loss_mask.index(1)
    assert chosen.ids[:n_prompt] == rejected.ids[:n_prompt]


def test_encoded_pair_in_a_hub_models_template_trains_only_the_answer(hub_tokenizer):
    chosen, rejected = encode_pair(hub_tokenizer, Preference([{"role": "user", "content": "Q?"}], "Yes.", "No way."))
    assert hub_tokenizer.decode([i for i, m in zip(chosen.ids, chosen.loss_mask) if m]) == "Yes.<|eot_id|>"
    assert hub_tokenizer.decode([i for i, m in zip(rejected.ids, rejected.loss_mask) if m]) == "No way.<|eot_id|>"
    n_prompt = chosen.loss_mask.index(1)
    assert chosen.ids[:n_prompt] == rejected.ids[:n_prompt]
    assert chosen.ids[0] == hub_tokenizer.bos_id  # the template writes <|begin_of_text|>
