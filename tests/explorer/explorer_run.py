"""A small run for the explorer's tests: every stage from 01 to 08; and a server thread for the browser.

Beside a slice of the built-in corpus, a JSONL source holds documents planted so that the
curation stage certainly finds an exact copy, a near duplicate and an e-mail address to redact.
"""

import json
import random
import socket
import threading
import time
from pathlib import Path

from tokenmill.config import shipped_config

PRESET = shipped_config("quickstart")
SUBJECTS = ["The river", "A small library", "The old bridge", "Our neighbour", "The museum", "A young teacher",
            "The harbour", "The committee", "A travelling musician", "The village baker", "The orchestra", "The garden"]
VERBS = ["carries", "describes", "welcomes", "repairs", "remembers", "collects", "follows", "shelters", "measures",
         "visits", "paints", "explains"]
OBJECTS = ["cold water from the northern hills", "the history of the valley", "visitors from distant towns",
           "the wooden boats before winter", "every song of the last festival", "letters written by farmers",
           "the path along the quiet shore", "children during the long storms", "the rainfall of each season",
           "the markets on the first morning of spring", "portraits of the fishermen", "how the old mill worked"]
EMAIL = "jane.doe@corp-mail.net"
# Markup inside a document: the page must show it as text and never run it.
MARKUP = '<img src="x" onerror="window.pwned = 1"><script>window.pwned = 2</script>'


def prose(rng: random.Random, sentences: int) -> str:
    return " ".join(f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}." for _ in range(sentences))


def planted_corpus(path: Path) -> dict[str, str]:
    rng = random.Random(7)
    texts = {f"planted/essay-{i}": prose(rng, 30) for i in range(12)}
    texts["planted/essay-0"] += f" The page of the archive once read {MARKUP} in its title."
    near = prose(rng, 40)
    words = near.split()
    words[len(words) // 2] = "lantern"
    texts["planted/original"] = texts["planted/essay-0"]  # an exact copy of essay 0
    texts["planted/near-a"] = near
    texts["planted/near-b"] = " ".join(words)  # one word changed
    texts["planted/contact"] = prose(rng, 20) + f" Questions about the archive go to {EMAIL} every weekday."
    with open(path, "w", encoding="utf-8") as f:
        for doc_id, text in texts.items():
            f.write(json.dumps({"id": doc_id, "text": text}) + "\n")
    return texts


def tiny_settings(run_dir: Path, corpus: Path) -> list[str]:
    return [
        f"run_dir={run_dir}",
        f"data.sources=[{{kind: local, max_bytes: 600000}}, {{kind: jsonl, paths: ['{corpus}'], domain: reference}}]",
        "curate.executor.workers=1", "tokenizer.vocab_size=512",
        "model.context_length=64", "pretrain.steps=6", "pretrain.batch_tokens=256", "pretrain.micro_batch=4",
        "pretrain.warmup_steps=2", "pretrain.eval_every=3", "pretrain.eval_batches=2", "pretrain.checkpoint_every=3",
        "pretrain.golden_every=6", "quantize.eval=true", "quantize.eval_batches=1", "quantize.eval_batch_size=2",
        "quantize.decode_tokens=4", "quantize.calib_samples=8", "quantize.calib_seq_len=64",
        "align.builtin.train_items=32", "align.builtin.eval_items=8", "align.sft.steps=3", "align.sft.samples=1",
        "align.rm.steps=3", "align.dpo.steps=3", "align.ppo.steps=2", "align.ppo.batch_size=4",
        "align.ppo.minibatch_size=2", "align.ppo.max_new_tokens=8", "align.ppo.eval_prompts=4",
        "align.cai.max_prompts=2", "align.cai.answer_tokens=8", "align.cai.critique_tokens=8",
        "eval.items=8", "eval.bytes_per_domain=300",
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving `app` on a free loopback port, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
