"""The evaluation stage on a small run folder: the built-in tasks written from its held-out data
run through lm-eval, and the table has every model, every task, chance levels and changes."""

from __future__ import annotations

import json
import shutil

from tokenmill.eval.config import EvalConfig
from tokenmill.eval.stage import eval_stage
from tokenmill.eval.tasks import held_out_items, write_builtin_tasks
from tokenmill.shards import ShardWriter
from tokenmill.sources.document import Document

ITEMS = [("json.dumps", "the Python function", "Serialize obj to a JSON formatted str."),
         ("os.getcwd", "the Python function", "Return the current working directory."),
         ("re.compile", "the Python function", "Compile a regular expression pattern."),
         ("shutil.copy", "the Python function", "Copy data and mode bits."),
         ("getent", "the command", "Get entries from Name Service Switch libraries.")]


def make_run(root, model_dir):
    with ShardWriter(root / "02_curate" / "shards") as writer:
        for i in range(4):
            writer.write(Document(f"code/{i}", f"def f{i}(x):\n    return x + {i}\n" * 3, "code"))
            writer.write(Document(f"reference/{i}", f"The statement number {i} binds a name.\n" * 2, "reference"))
    data = root / "06_align" / "data"
    data.mkdir(parents=True)
    data.joinpath("pref_eval.jsonl").write_text("".join(json.dumps(
        {"prompt": [{"role": "user", "content": f"What does {what} {name} do?"}], "chosen": f"{name}: {summary}",
         "rejected": "x: y", "item": name, "rejected_item": "x"}) + "\n" for name, what, summary in ITEMS))
    for rel in ("05_pretrain/model", "06_align/sft"):
        shutil.copytree(model_dir, root / rel)


def test_builtin_tasks_hold_out_items_and_offer_four_choices_of_one_family(tmp_path, model_dir):
    make_run(tmp_path, model_dir)
    items = held_out_items(tmp_path / "06_align" / "data" / "pref_eval.jsonl")
    assert [i["kind"] for i in items] == ["function"] * 4 + ["command"]
    names = write_builtin_tasks(tmp_path / "tasks", {"code": ["a b c"]}, items)
    assert names == ["bpb_code", "doc_choice", "doc_answer"]
    choices = [json.loads(line) for line in (tmp_path / "tasks" / "doc_choice.jsonl").read_text().splitlines()]
    # The command has no three other man items to be confused with: only the Python items are asked.
    assert len(choices) == 4 and all(len(c["choices"]) == 4 for c in choices)
    assert {c["choices"][c["gold"]] for c in choices} == {s for _, what, s in ITEMS if "Python" in what}


def test_eval_stage_tables_every_model_on_every_task(tmp_path, model_dir):
    root = tmp_path / "run"
    make_run(root, model_dir)
    out = tmp_path / "09_eval"
    out.mkdir()
    lines = []
    metrics = eval_stage(root, EvalConfig(standard=["no_such_task_here"], batch_size=4), "sft", 1.0, out,
                         log=lines.append)
    table = metrics["table"]
    assert metrics["models"] == ["pretrained", "sft"]
    assert table["tasks"] == ["bpb_code", "bpb_reference", "doc_choice", "doc_answer"]
    assert table["chance"] == {"bpb_code": None, "bpb_reference": None, "doc_choice": 0.25, "doc_answer": 0.0}
    assert table["metric"]["bpb_code"] == "bits_per_byte" and table["metric"]["doc_answer"] == "exact_match"
    pre, sft = table["models"]["pretrained"], table["models"]["sft"]
    assert pre["scores"]["bpb_code"] > 0 and pre["previous"] is None and pre["change"] == {}
    # The same weights: the same scores, no change.
    assert sft["previous"] == "pretrained" and sft["scores"] == pre["scores"]
    assert all(v == 0 for v in sft["change"].values())
    assert any("no_such_task_here skipped" in line for line in lines)
    assert json.loads((out / "summary.json").read_text())["table"] == table
    assert (out / "scores.svg").is_file() and (out / "bits_per_byte.svg").is_file()
