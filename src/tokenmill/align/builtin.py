"""The built-in instruction and preference sets, derived from the run's own corpus.

Every documented item the corpus holds becomes a question and its answer, taken from the
item's own documentation — nothing is written by hand:

    Python source (ast)   "What does the Python function json.dumps do?"
                          → "json.dumps: Serialize obj to a JSON formatted str."   (its docstring)
    man pages (NAME)      "What does the command getent do?"
                          → "getent: Get entries from Name Service Switch libraries."

The preferred answer is the item's own documentation; the rejected one is the documentation
of another item of the same kind (a plausible answer to a different question). Answers name
their item, so a small model can learn to check an answer against its question. Items are
split before anything is built: the held-out questions are about items that no training
example mentions. The same seed gives the same files, in the formats `data.py` reads:

    sft_train.jsonl  sft_eval.jsonl    {"messages": [...]}                       (some two-turn)
    pref_train.jsonl pref_eval.jsonl   {"prompt": [...], "chosen": str, "rejected": str}
    prompts_train.jsonl prompts_eval.jsonl  {"messages": [user turn]}
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tokenmill.align.config import KIND_NAMES, BuiltinConfig
from tokenmill.align.data import Conversation, Preference, conversation_record, preference_record, write_jsonl
from tokenmill.atomic import write_json
from tokenmill.errors import TokenmillError
from tokenmill.shards import read_shards, shard_paths
from tokenmill.sources.document import Document

QUESTIONS = ("What does {what} {name} do?", "What is {what} {name} for?", "Explain {what} {name} in one sentence.")
FOLLOW_UPS = ("And {what} {name}?", "What about {what} {name}?")
# The items a rejected answer is drawn from: the same family of documentation.
FAMILY = {"module": "python", "function": "python", "class": "python", "method": "python",
          "command": "man", "c_function": "man", "manual": "man"}
MAN_HEADER = re.compile(r"\A\s*\S+\(\w+\)")
MAN_NAME = re.compile(r"^NAME\s*\n(.+?)(?:\n\s*\n|\n[A-Z][A-Z ]+\n)", re.M | re.S)
SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True)
class Item:
    """A documented thing: its kind (see KIND_NAMES), its name and a one-sentence summary."""

    kind: str
    name: str
    summary: str
    where: str

    def question(self, rng: random.Random, templates: tuple[str, ...] = QUESTIONS) -> str:
        return rng.choice(templates).format(what=KIND_NAMES[self.kind], name=self.name)

    @property
    def answer(self) -> str:
        return f"{self.name}: {self.summary}"


def summarize(text: str, limit: int) -> str | None:
    """The first sentence of the first paragraph, whitespace collapsed, capitalised, cut at a word
    to `limit` characters; None when it is too short to say anything."""
    paragraph = re.split(r"\n\s*\n", text.strip(), maxsplit=1)[0]
    paragraph = " ".join(paragraph.split())
    sentence = SENTENCE_END.split(paragraph, maxsplit=1)[0]
    if len(sentence) > limit:
        sentence = sentence[: limit + 1].rsplit(" ", 1)[0].rstrip(",;:") + " …"
    if len(sentence.split()) < 3 or not sentence[0].isalpha():
        return None
    sentence = sentence[0].upper() + sentence[1:]
    return sentence if sentence[-1] in ".!?…" else sentence + "."


def python_items(doc: Document, limit: int) -> Iterator[Item]:
    """The module, its public functions and classes, and their public methods, with docstrings."""
    try:
        tree = ast.parse(doc.text)
    except (SyntaxError, ValueError, RecursionError):
        return
    module = doc.id.split("/", 1)[-1].removesuffix(".py").replace("/", ".").removesuffix(".__init__")

    def item(kind: str, name: str, node) -> Iterator[Item]:
        docstring = ast.get_docstring(node)
        summary = summarize(docstring, limit) if docstring else None
        if summary:
            yield Item(kind, name, summary, doc.id)

    yield from item("module", module, tree)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            yield from item("function", f"{module}.{node.name}", node)
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from item("class", f"{module}.{node.name}", node)
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith("_"):
                    yield from item("method", f"{module}.{node.name}.{sub.name}", sub)


def man_item(doc: Document, limit: int) -> Item | None:
    """A man page's NAME line, "getent - get entries from ...", as an item of its section's kind."""
    m = MAN_NAME.search(doc.text)
    if m is None:
        return None
    line = " ".join(m.group(1).split())
    names, sep, what = line.partition(" - ")
    if not sep:
        names, sep, what = line.partition(" \\- ")
    name = names.split(",")[0].strip()
    summary = summarize(what, limit) if sep else None
    if not name or not summary or " " in name:
        return None
    section = MAN_HEADER.match(doc.text).group(0).strip().rsplit("(", 1)[1].rstrip(")")
    kind = "command" if section[:1] in ("1", "6", "8") else "c_function" if section[:1] in ("2", "3") else "manual"
    return Item(kind, name, summary, doc.id)


def is_python(doc: Document) -> bool:
    return doc.meta.get("language") == "python" or doc.id.endswith(".py") or str(doc.meta.get("location", "")).endswith(".py")


def corpus_items(docs: Iterable[Document], config: BuiltinConfig) -> list[Item]:
    """Every documented item of the corpus, the first of each name kept, in corpus order."""
    seen: set[str] = set()
    items = []
    for doc in docs:
        if is_python(doc):
            found = list(python_items(doc, config.max_answer_chars))
        elif MAN_HEADER.match(doc.text):
            found = [i for i in [man_item(doc, config.max_answer_chars)] if i is not None]
        else:
            continue
        for item in found:
            if item.kind in config.kinds and item.name not in seen:
                seen.add(item.name)
                items.append(item)
    return items


def _rejected(item: Item, pool: list[Item], fallback: list[Item], rng: random.Random) -> Item:
    """Another item, of the same family when it has one, whose documentation says something else."""
    for candidates in (pool, fallback):
        for _ in range(50):
            other = rng.choice(candidates)
            if other.name != item.name and other.summary != item.summary:
                return other
    raise TokenmillError(f"no item documented differently from {item.name} ({item.where})")


def build_sets(items: list[Item], config: BuiltinConfig) -> dict[str, list[dict]]:
    """Split the items, then build SFT conversations, preferences and prompts for each side."""
    rng = random.Random(config.seed)
    order = sorted(items, key=lambda i: i.name)  # independent of the corpus order
    rng.shuffle(order)
    if len(order) < config.eval_items + 50:
        raise TokenmillError(
            f"the corpus has {len(order)} documented items (Python docstrings, man pages), too few to hold out "
            f"{config.eval_items} and train on the rest; lower eval_items or bring your own data files"
        )
    splits = {"train": order[config.eval_items :][: config.train_items], "eval": order[: config.eval_items]}
    sets: dict[str, list[dict]] = {}
    for split, chosen in splits.items():
        # Rejected answers come from the same split, so no held-out text leaks into training.
        families: dict[str, list[Item]] = {}
        for item in chosen:
            families.setdefault(FAMILY[item.kind], []).append(item)
        sft, prefs, prompts = [], [], []
        for i, item in enumerate(chosen):
            messages = [{"role": "user", "content": item.question(rng)}, {"role": "assistant", "content": item.answer}]
            if rng.random() < config.multi_turn:
                second = chosen[(i + 1) % len(chosen)]
                messages += [{"role": "user", "content": second.question(rng, FOLLOW_UPS)},
                             {"role": "assistant", "content": second.answer}]
            sft.append(conversation_record(Conversation(messages)))
            prompt = [{"role": "user", "content": item.question(rng)}]
            other = _rejected(item, families[FAMILY[item.kind]], chosen, rng)
            meta = {"item": item.name, "rejected_item": other.name}
            prefs.append(preference_record(Preference(prompt, item.answer, other.answer, meta)))
            prompts.append({"messages": prompt, "item": item.name})
        sets[f"sft_{split}"], sets[f"pref_{split}"], sets[f"prompts_{split}"] = sft, prefs, prompts
    return sets


def read_documents(shard_dirs: Iterable[Path]) -> Iterator[Document]:
    for folder in shard_dirs:
        paths = shard_paths(folder)
        if not paths:
            raise TokenmillError(f"no document shards in {folder}")
        yield from read_shards(paths)


def build_builtin_sets(shard_dirs: list[Path], out_dir: Path, config: BuiltinConfig | None = None) -> dict:
    """Write the six JSONL files of the built-in sets into `out_dir`, and stats.json; return the stats."""
    config = config or BuiltinConfig()
    docs = tqdm(read_documents(shard_dirs), desc="documented items", unit=" docs", leave=False)
    items = corpus_items(docs, config)
    sets = build_sets(items, config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in sets.items():
        write_jsonl(out_dir / f"{name}.jsonl", records)
    kinds: dict[str, int] = {}
    for item in items:
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
    stats = {
        "items": len(items),
        "items_by_kind": kinds,
        **{name: len(records) for name, records in sets.items()},
        "multi_turn_sft_train": sum(len(r["messages"]) > 2 for r in sets["sft_train"]),
        "seed": config.seed,
    }
    write_json(out_dir / "stats.json", stats)
    return stats
