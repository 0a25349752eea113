"""Constitutional AI (Bai et al., 2022): the model answers, critiques its answer against a
principle of the constitution, and revises it; the revisions become SFT data and the (revised,
original) pairs preference data for DPO or the reward model (RLAIF).

Each prompt becomes one conversation, as in the paper:

    user: <prompt>
    assistant: <answer>
    user: <critique request, naming a principle drawn at random>
    assistant: <critique>
    user: <revision request>
    assistant: <revision>

The model is the local model folder, run in process with batched KV-cached sampling, or any
OpenAI-compatible endpoint named in the config (tokenmill's own server, or a much larger model).
The constitution and the two requests are text files the user edits; the defaults ship in
`prompts/`. A request may use {principle}, {prompt} and {answer}, and the revision request also
{critique}.

    summary = run_cai(CaiConfig(), sft_dir, prompts, out_dir)

writes constitution.txt, critique.txt and revision.txt (those used), critiques.jsonl (one line
a prompt: prompt, principle, answer, critique, revision), sft.jsonl (prompt + revision, OpenAI
`messages`), pref.jsonl (prompt, chosen = revision, rejected = answer) and summary.json.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from tqdm import tqdm

from tokenmill.align.config import CaiConfig
from tokenmill.align.data import Conversation, Preference, conversation_record, preference_record, write_jsonl
from tokenmill.align.openai_client import ChatClient, EndpointError
from tokenmill.atomic import write_json, write_text
from tokenmill.device import pick_device
from tokenmill.errors import TokenmillError
from tokenmill.model.generate import generate
from tokenmill.model.io import load_model
from tokenmill.tokenizer import Tokenizer

DEFAULTS = Path(__file__).parent / "prompts"
PLACEHOLDER = re.compile(r"\{(\w+)\}")


class Constitution:
    """The principles and the critique and revision requests, read and checked once."""

    def __init__(self, config: CaiConfig) -> None:
        path = config.constitution or DEFAULTS / "constitution.txt"
        lines = [line.strip() for line in read(path, "constitution").splitlines()]
        self.principles = [line for line in lines if line and not line.startswith("#")]
        if not self.principles:
            raise TokenmillError(f"the constitution {path} has no principle (one a line; # starts a comment)")
        self.path = path
        self.critique = read(config.critique_prompt or DEFAULTS / "critique.txt", "critique request").strip()
        self.revision = read(config.revision_prompt or DEFAULTS / "revision.txt", "revision request").strip()
        check_placeholders(self.critique, {"principle", "prompt", "answer"}, config.critique_prompt or "critique.txt")
        check_placeholders(self.revision, {"principle", "prompt", "answer", "critique"}, config.revision_prompt or "revision.txt")


def read(path: Path, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenmillError(f"the {what} file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenmillError(f"cannot read the {what} file {path}: {e}") from None


def check_placeholders(template: str, allowed: set[str], where) -> None:
    unknown = sorted(set(PLACEHOLDER.findall(template)) - allowed)
    if unknown:
        raise TokenmillError(
            f"{where} uses {{{unknown[0]}}}; a request may use {', '.join('{' + a + '}' for a in sorted(allowed))}"
        )


def fill(template: str, values: dict[str, str]) -> str:
    """The template with each {name} replaced; the inserted text itself is never scanned again."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


class LocalModel:
    """The model of a folder, answering batches of conversations in process."""

    def __init__(self, model_dir: Path, config: CaiConfig) -> None:
        self.tokenizer = Tokenizer.load(model_dir)
        self.model = load_model(model_dir, device=pick_device(config.device))
        self.config = config
        self.generator = torch.Generator(device=next(self.model.parameters()).device).manual_seed(config.seed)
        self.name = str(model_dir)

    def chat(self, conversations: Sequence[list[dict]], max_tokens: int) -> list[str | None]:
        """The answer to each conversation; None where the conversation and answer exceed the context."""
        tok, room = self.tokenizer, self.model.config.context_length - max_tokens
        ids = [tok.encode_chat(c, add_generation_prompt=True).ids for c in conversations]
        fits = [i for i, x in enumerate(ids) if len(x) <= room]
        fits.sort(key=lambda i: len(ids[i]))  # similar lengths share a batch: less padding to decode
        answers: list[str | None] = [None] * len(conversations)
        for start in range(0, len(fits), self.config.batch_size):
            rows = fits[start : start + self.config.batch_size]
            out = generate(
                self.model, [ids[i] for i in rows], max_tokens, temperature=self.config.temperature,
                stop_ids=tok.stop_ids, pad_id=tok.pad_id, generator=self.generator,
            )
            for j, i in enumerate(rows):
                # Decoded as an OpenAI-compatible server decodes: a stray special token stays as text.
                answers[i] = tok.decode(out.response_ids(j, strip_stop=True)).strip()
        return answers

    def close(self) -> None:
        pass


class Endpoint:
    """An OpenAI-compatible endpoint, asked `concurrency` conversations at a time."""

    def __init__(self, config: CaiConfig) -> None:
        self.client = ChatClient(config.endpoint)
        self.config = config
        self.name = f"{config.endpoint.base_url} ({config.endpoint.model})"

    def chat(self, conversations: Sequence[list[dict]], max_tokens: int) -> list[str | None]:
        def one(item: tuple[int, list[dict]]) -> str | None:
            i, messages = item
            try:
                return self.client.chat(messages, max_tokens, self.config.temperature, seed=self.config.seed + i).strip()
            except EndpointError as e:
                if e.status in (400, 413, 422):  # this conversation refused (too long, say): skip it alone
                    return None
                raise

        with ThreadPoolExecutor(self.config.endpoint.concurrency) as pool:
            return list(pool.map(one, enumerate(conversations)))

    def close(self) -> None:
        self.client.close()


def run_cai(
    config: CaiConfig,
    model_dir: Path | None,
    prompts: list[list[dict]],
    out_dir: Path,
) -> dict:
    """Answer, critique and revise each prompt (message lists ending with a user turn) with the
    endpoint of the config, or else the model folder `model_dir`; write the files and return the summary."""
    started = time.perf_counter()
    constitution = Constitution(config)
    if config.endpoint is not None:
        backend = Endpoint(config)
    elif model_dir is not None:
        backend = LocalModel(Path(model_dir), config)
    else:
        raise TokenmillError("constitutional AI needs a model: a model folder, or an endpoint in the config")
    if not prompts:
        raise TokenmillError("constitutional AI got no prompts")
    try:
        return _run(config, constitution, backend, prompts[: config.max_prompts], Path(out_dir), started)
    finally:
        backend.close()


def _run(config: CaiConfig, constitution: Constitution, backend, prompts: list[list[dict]], out_dir: Path,
         started: float) -> dict:
    draw = random.Random(config.seed)
    principles = [draw.choice(constitution.principles) for _ in prompts]
    skipped: Counter[str] = Counter()

    progress = tqdm(total=3, desc="cai", unit="round")
    answers = backend.chat(prompts, config.answer_tokens)
    progress.update()
    critique_requests = [
        fill(constitution.critique, {"principle": p, "prompt": q[-1]["content"], "answer": a or ""})
        for q, a, p in zip(prompts, answers, principles)
    ]
    asked = [i for i, a in enumerate(answers) if a]
    skipped["no_answer"] = len(prompts) - len(asked)
    critique_turns = {i: prompts[i] + [{"role": "assistant", "content": answers[i]},
                                       {"role": "user", "content": critique_requests[i]}] for i in asked}
    critiques = dict(zip(asked, backend.chat([critique_turns[i] for i in asked], config.critique_tokens)))
    progress.update()
    asked = [i for i in asked if critiques[i]]
    skipped["no_critique"] = len(critiques) - len(asked)
    revision_turns = {
        i: critique_turns[i] + [
            {"role": "assistant", "content": critiques[i]},
            {"role": "user", "content": fill(constitution.revision, {
                "principle": principles[i], "prompt": prompts[i][-1]["content"], "answer": answers[i], "critique": critiques[i],
            })},
        ]
        for i in asked
    }
    revisions = dict(zip(asked, backend.chat([revision_turns[i] for i in asked], config.answer_tokens)))
    progress.update()
    progress.close()

    records, sft, pref = [], [], []
    for i in asked:
        revision = revisions[i]
        records.append({"prompt": prompts[i], "principle": principles[i], "answer": answers[i],
                        "critique_request": critique_requests[i], "critique": critiques[i], "revision": revision})
        if not revision:
            skipped["no_revision"] += 1
            continue
        sft.append(conversation_record(Conversation(prompts[i] + [{"role": "assistant", "content": revision}])))
        if revision == answers[i]:
            skipped["revision_unchanged"] += 1  # no preference to learn from
            continue
        pref.append(preference_record(Preference(prompts[i], revision, answers[i], {"principle": principles[i]})))

    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "constitution.txt", "\n".join(constitution.principles) + "\n")
    write_text(out_dir / "critique.txt", constitution.critique + "\n")
    write_text(out_dir / "revision.txt", constitution.revision + "\n")
    write_jsonl(out_dir / "critiques.jsonl", records)
    write_jsonl(out_dir / "sft.jsonl", sft)
    write_jsonl(out_dir / "pref.jsonl", pref)
    summary = {
        "model": backend.name,
        "prompts": len(prompts),
        "critiques": len(records),
        "revisions": len(sft),
        "preference_pairs": len(pref),
        "skipped": {k: v for k, v in skipped.items() if v},
        "principles_used": dict(Counter(principles[i] for i in asked)),
        "seconds": round(time.perf_counter() - started, 2),
    }
    write_json(out_dir / "summary.json", summary)
    return summary
