"""The built-in tasks: lm-eval task files (YAML + local JSONL) written from a run's own held-out data.

    bpb_DOMAIN    bits per byte on the domain's validation documents (the documents stage 03's
                  encode split holds out of pre-training); per byte, so tokenizers compare
    doc_choice    4-way multiple choice: which one-sentence documentation belongs to a function,
                  class, command, ... of the items stage 06 holds out of alignment; the three
                  wrong choices document other held-out items of the same family (Python or man)
    doc_answer    exact match: the held-out question answered with the item's own documentation,
                  greedily, up to the end of the line

The files need no network: `dataset_path: json` with `data_files` naming the JSONL written here.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

from tokenmill.align.builtin import FAMILY
from tokenmill.align.config import KIND_NAMES
from tokenmill.errors import TokenmillError
from tokenmill.sources.document import Document
from tokenmill.tokenizer.encode import is_validation

CHOICES = 4
# Chance level of each built-in task's headline metric (bits per byte has none: lower is better).
CHANCE = {"doc_choice": 1 / CHOICES, "doc_answer": 0.0}


def _write(folder: Path, name: str, records: list[dict], yaml_body: str) -> None:
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    head = f"task: {name}\ntag: tokenmill_builtin\ndataset_path: json\ndataset_kwargs:\n  data_files:\n" \
           f"    test: {json.dumps(str(data.resolve()))}\ntest_split: test\n"
    (folder / f"{name}.yaml").write_text(head + yaml_body, encoding="utf-8")


def held_out_documents(docs: Iterable[Document], val_fraction: float, max_bytes: int) -> dict[str, list[str]]:
    """Per domain, the texts of the validation documents (each id once, as the encode split sees
    it), up to `max_bytes` of UTF-8 per domain; a longer document is cut at a line."""
    texts: dict[str, list[str]] = {}
    used: dict[str, int] = {}
    seen: set[str] = set()
    for doc in docs:
        if doc.id in seen or not is_validation(doc.id, val_fraction) or not doc.text.strip():
            continue
        seen.add(doc.id)
        room = max_bytes - used.get(doc.source, 0)
        if room <= 0:
            continue
        text = doc.text
        if len(text.encode("utf-8")) > room:
            text = text.encode("utf-8")[:room].decode("utf-8", "ignore").rsplit("\n", 1)[0] or text[:room]
        texts.setdefault(doc.source, []).append(text)
        used[doc.source] = used.get(doc.source, 0) + len(text.encode("utf-8"))
    return texts


def _item(record: dict) -> dict:
    """The held-out item of a preference record of the built-in sets: name, kind, summary."""
    name, question = record["item"], record["prompt"][0]["content"]
    kind = next((k for k, what in KIND_NAMES.items() if f"{what} {name}" in question), None)
    if kind is None or not record["chosen"].startswith(f"{name}: "):
        raise TokenmillError(f"a held-out preference record about {name!r} is not one the built-in sets write")
    return {"name": name, "kind": kind, "summary": record["chosen"][len(name) + 2:], "question": question}


def held_out_items(pref_eval: Path) -> list[dict]:
    if not pref_eval.is_file():
        raise TokenmillError(f"the built-in tasks need the held-out items of stage 06: {pref_eval} not found")
    items = [_item(json.loads(line)) for line in pref_eval.read_text(encoding="utf-8").splitlines() if line.strip()]
    return list({i["name"]: i for i in items}.values())


def choice_records(items: list[dict], seed: int) -> list[dict]:
    """One 4-way question per item whose family holds three other summaries to choose from."""
    rng = random.Random(seed)
    families: dict[str, list[dict]] = {}
    for item in items:
        families.setdefault(FAMILY[item["kind"]], []).append(item)
    records = []
    for item in items:
        others = [o["summary"] for o in families[FAMILY[item["kind"]]] if o["summary"] != item["summary"]]
        others = list(dict.fromkeys(others))
        if len(others) < CHOICES - 1:
            continue
        choices = [item["summary"], *rng.sample(others, CHOICES - 1)]
        rng.shuffle(choices)
        records.append({"query": f"Documentation of {KIND_NAMES[item['kind']]} {item['name']}:",
                        "choices": choices, "gold": choices.index(item["summary"])})
    return records


def write_builtin_tasks(folder: Path, domain_texts: dict[str, list[str]], items: list[dict], seed: int = 0,
                        max_items: int = 200) -> list[str]:
    """Write every built-in task into `folder` (an lm-eval include path); return the task names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for domain, texts in sorted(domain_texts.items()):
        name = f"bpb_{domain}"
        _write(folder, name, [{"text": t} for t in texts],
               "output_type: loglikelihood_rolling\ndoc_to_text: ''\ndoc_to_target: '{{text}}'\n"
               "metric_list:\n  - metric: bits_per_byte\n    aggregation: bits_per_byte\n    higher_is_better: false\n")
        names.append(name)
    items = items[:max_items]
    choices = choice_records(items, seed)
    if choices:
        _write(folder, "doc_choice", choices,
               "output_type: multiple_choice\ndoc_to_text: '{{query}}'\ndoc_to_choice: '{{choices}}'\n"
               "doc_to_target: '{{gold}}'\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n")
        names.append("doc_choice")
    if items:
        _write(folder, "doc_answer",
               [{"question": i["question"], "answer": f"{i['name']}: {i['summary']}"} for i in items],
               "output_type: generate_until\ndoc_to_text: 'Question: {{question}}\\nAnswer:'\n"
               "doc_to_target: '{{answer}}'\ngeneration_kwargs:\n  until: ['\\n']\n  max_gen_toks: 48\n"
               "  do_sample: false\nfilter_list:\n  - name: strip\n    filter:\n      - function: remove_whitespace\n"
               "      - function: take_first\nmetric_list:\n  - metric: exact_match\n")
        names.append("doc_answer")
    if not names:
        raise TokenmillError(f"no built-in task could be written into {folder}: no held-out documents or items")
    return names
