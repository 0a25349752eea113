"""The curation pipeline: fused passes, exact statistics, errors, barriers, resume after SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from pydantic import ValidationError

from tokenmill.curate.block import BlockStats, CorpusBlock, DocumentBlock, FitContext
from tokenmill.curate.config import BLOCKS, CurateConfig
from tokenmill.curate.dedup.exact import ExactDedup
from tokenmill.curate.executor import ExecutorConfig
from tokenmill.curate.mixture import Mixture
from tokenmill.curate.pipeline import _spec, curate, run_blocks
from tokenmill.errors import TokenmillError
from tokenmill.shards import ShardWriter, read_shards, shard_paths
from tokenmill.sources.document import Document

NO_MIX = Mixture(enabled=False)


class DropShort(DocumentBlock):
    name: ClassVar[str] = "drop_short"
    min_chars: int = 10

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        if len(doc.text) < self.min_chars:
            stats.remove(doc, "drop_short.too_short", f"{len(doc.text)} chars")
            return None
        return doc


class Shout(DocumentBlock):
    name: ClassVar[str] = "shout"

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        stats.count("shouted")
        doc.text = doc.text.upper()
        return doc


class Flaky(DocumentBlock):
    """Fails on documents containing BOOM, after scribbling on them."""

    name: ClassVar[str] = "flaky"

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        doc.meta["touched"] = True
        if "BOOM" in doc.text:
            doc.text = "half-written"
            raise RuntimeError("cannot parse")
        return doc


class FlakyDrop(Flaky):
    name: ClassVar[str] = "flaky_drop"
    drop_on_error: ClassVar[bool] = True


class Silent(DocumentBlock):
    """Returns None without saying why: the pipeline still records the removal."""

    name: ClassVar[str] = "silent"

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        return None if doc.text.startswith("quiet") else doc


def first_copy_ids(path: Path) -> list[str]:
    seen, keep = set(), []
    for doc in read_shards([path]):
        if doc.text not in seen:
            seen.add(doc.text)
            keep.append(doc.id)
    return keep


class FirstCopy(CorpusBlock):
    """A small exact dedup: the fit pass finds, in corpus order, the first document of each text."""

    name: ClassVar[str] = "first_copy"
    _keep: set = set()

    def fit(self, ctx: FitContext) -> None:
        done = ctx.workdir / "keep.json"
        if done.exists():
            return
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        with open(ctx.workdir.parent.parent / "fit_calls.txt", "a") as f:
            f.write("fit\n")
        per_shard = ctx.executor.map(first_copy_ids, ctx.shards)
        seen, keep = set(), []
        for path, ids in zip(ctx.shards, per_shard):
            texts = {d.id: d.text for d in read_shards([path])}
            for i in ids:
                if texts[i] not in seen:
                    seen.add(texts[i])
                    keep.append(i)
        done.write_text(json.dumps(keep))
        (ctx.workdir / "metrics.json").write_text(json.dumps({"kept": len(keep), "seen": len(seen)}))
        (ctx.workdir / "copies.svg").write_text("<svg/>")

    def load(self, workdir: Path) -> None:
        self._keep = set(json.loads((workdir / "keep.json").read_text()))

    def apply(self, doc: Document, stats: BlockStats) -> Document | None:
        if doc.id not in self._keep:
            stats.remove(doc, "first_copy.duplicate")
            return None
        return doc


def make_docs(n: int = 60) -> list[Document]:
    docs = []
    for i in range(n):
        domain = ("web", "code", "reference")[i % 3]
        text = "tiny" if i % 7 == 0 else f"document {i % 20} about the {domain} domain, padded " + "x" * (i % 11)
        docs.append(Document(f"d{i:03d}", text, domain, {"n": i}))
    return docs


def write_input(folder: Path, docs: list[Document], per_shard: int = 20) -> list[Path]:
    paths = []
    for k in range(0, len(docs), per_shard):
        with ShardWriter(folder, prefix=f"in{k // per_shard}") as w:
            for d in docs[k : k + per_shard]:
                w.write(d)
        paths += w.paths
    return paths


def run(tmp_path: Path, blocks, inputs, name="out", work="work", workers=1, task_bytes=400, mixture=NO_MIX):
    result = run_blocks(
        inputs, blocks, mixture, ExecutorConfig(workers=workers, task_bytes=task_bytes),
        tmp_path / name, tmp_path / work, seed=0, progress=False,
    )
    stats = json.loads((tmp_path / name / "stats.json").read_text())
    out = list(read_shards(shard_paths(tmp_path / name / "shards")))
    return result, stats, out


def nbytes(docs) -> int:
    return sum(len(d.text.encode()) for d in docs)


def test_fused_pass_counts_every_document_and_byte(tmp_path):
    docs = make_docs()
    inputs = write_input(tmp_path / "in", docs)
    result, stats, out = run(tmp_path, [DropShort(), Shout(domains=["web"])], inputs)

    short = [d for d in docs if len(d.text) < 10]
    long = [d for d in docs if len(d.text) >= 10]
    assert len(stats["passes"]) == 1 and stats["passes"][0]["blocks"] == ["drop_short", "shout"]
    assert stats["passes"][0]["tasks"] > len(inputs)  # the input was cut into smaller pieces
    drop, shout = stats["blocks"]
    assert (drop["docs_in"], drop["bytes_in"]) == (60, nbytes(docs))
    assert (drop["docs_out"], drop["bytes_out"]) == (len(long), nbytes(long))
    assert drop["removed"]["drop_short.too_short"]["docs"] == len(short) == 9
    assert drop["removed"]["drop_short.too_short"]["bytes"] == nbytes(short)
    assert drop["in_by_domain"] == {"code": 20, "reference": 20, "web": 20}
    assert drop["removed_by_domain"] == {d: sum(1 for s in short if s.source == d) for d in ("code", "reference", "web")}
    web = [d for d in long if d.source == "web"]
    assert shout["docs_in"] == shout["docs_out"] == len(long)
    assert shout["counters"] == {"shouted": len(web), "outside_domains": len(long) - len(web)}
    # Output: corpus order, web upper-cased, the rest untouched.
    assert [d.id for d in out] == [d.id for d in long]
    assert [d.text for d in out] == [d.text.upper() if d.source == "web" else d.text for d in long]
    assert stats["totals"] == {
        "docs_in": 60, "bytes_in": nbytes(docs), "docs_out": len(long), "bytes_out": nbytes(out),
        "docs_removed": 9, "bytes_removed": nbytes(docs) - nbytes(out), "errors": 0,
    }
    assert stats["domains"]["web"]["docs_out"] == len(web)
    assert result["metrics"]["removed_by_block"] == {"drop_short": 9, "shout": 0}
    assert result["figures"] == ["curation.svg", "mixture.svg"]
    samples = [json.loads(line) for line in (tmp_path / "out" / "removed_samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == [d.id for d in short[:5]]
    assert samples[0]["block"] == "drop_short" and samples[0]["excerpt"] == "tiny"
    # Beyond the five samples, every removed document is recorded with its rule and detail.
    removed = [json.loads(line) for line in (tmp_path / "out" / "removed.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in removed) == sorted(d.id for d in short)
    assert all(r["block"] == "drop_short" and r["reason"] == "drop_short.too_short" for r in removed)
    assert {r["id"]: r["detail"] for r in removed} == {d.id: f"{len(d.text)} chars" for d in short}
    assert "<svg" in (tmp_path / "out" / "curation.svg").read_text()


def test_an_error_on_one_document_is_recorded_and_the_run_goes_on(tmp_path):
    docs = make_docs(12)
    docs[3].text += " BOOM"
    docs[8].text += " BOOM"
    inputs = write_input(tmp_path / "in", docs)
    _, stats, out = run(tmp_path, [Flaky()], inputs)
    flaky = stats["blocks"][0]
    assert flaky["errors"] == 2 and flaky["docs_out"] == 12
    assert [e["id"] for e in flaky["error_samples"]] == ["d003", "d008"]
    assert flaky["error_samples"][0]["error"] == "RuntimeError: cannot parse"
    by_id = {d.id: d for d in out}
    # A failed document is kept as it was before the block touched it.
    assert by_id["d003"].text == docs[3].text and "touched" not in by_id["d003"].meta
    assert by_id["d004"].meta["touched"] is True

    _, stats, out = run(tmp_path, [FlakyDrop(), Silent()], inputs, name="out2", work="work2")
    drop, silent = stats["blocks"]
    assert drop["errors"] == 2 and drop["removed"]["flaky_drop.error"]["docs"] == 2
    assert [d.id for d in out] == [d.id for d in docs if "BOOM" not in d.text]
    assert silent["docs_in"] == silent["docs_out"] == 10 and silent["removed"] == {}


def test_unrecorded_removal_gets_a_reason(tmp_path):
    docs = [Document("a", "quiet please", "web"), Document("b", "loud", "web")]
    _, stats, out = run(tmp_path, [Silent()], write_input(tmp_path / "in", docs))
    assert [d.id for d in out] == ["b"]
    assert stats["blocks"][0]["removed"]["silent.unrecorded"]["docs"] == 1


def test_corpus_block_is_a_barrier_and_fits_on_what_the_blocks_before_it_kept(tmp_path):
    docs = [
        Document("a", "tiny text", "web"),  # removed before the fit: its code copy "d" is then the first
        Document("b", "the same text here", "web"),
        Document("c", "the same text here", "code"),
        Document("d", "tiny text", "code"),
        Document("e", "another long text", "web"),
        Document("f", "another long text", "web"),
        Document("g", "tiny text", "code"),
    ]
    inputs = write_input(tmp_path / "in", docs, per_shard=3)
    result, stats, out = run(tmp_path, [DropShort(domains=["web"]), FirstCopy(), Shout()], inputs, task_bytes=60)
    assert [p["blocks"] for p in stats["passes"]] == [["drop_short"], ["first_copy", "shout"]]
    assert [d.id for d in out] == ["b", "d", "e"]
    assert [d.text for d in out] == ["THE SAME TEXT HERE", "TINY TEXT", "ANOTHER LONG TEXT"]
    first = stats["blocks"][1]
    assert first["kind"] == "corpus" and "fit_seconds" in first
    # The block's own summary of its fit and its chart are published with the stage.
    assert first["fit"] == {"kept": 3, "seen": 3}
    assert result["figures"] == ["curation.svg", "mixture.svg", "first_copy-copies.svg"]
    assert (tmp_path / "out" / "first_copy-copies.svg").read_text() == "<svg/>"
    assert (first["docs_in"], first["docs_out"]) == (6, 3)
    assert first["removed"]["first_copy.duplicate"]["docs"] == 3


def test_parallel_workers_give_the_same_output(tmp_path):
    docs = make_docs(90)
    inputs = write_input(tmp_path / "in", docs, per_shard=45)
    blocks = [DropShort(), FirstCopy(), Shout(domains=["code"])]
    _, one, out1 = run(tmp_path, blocks, inputs, name="o1", work="w1", workers=1)
    _, two, out2 = run(tmp_path, blocks, inputs, name="o2", work="w2", workers=2)
    assert [d.to_dict() for d in out1] == [d.to_dict() for d in out2]
    strip = lambda s: [{k: v for k, v in b.items() if not k.endswith("seconds")} for b in s["blocks"]]  # noqa: E731
    assert strip(one) == strip(two)
    assert len({d.text for d in out1}) == len(out1)


def test_resume_reuses_finished_work_and_a_changed_config_redoes_it(tmp_path):
    docs = make_docs(60)
    inputs = write_input(tmp_path / "in", docs)
    blocks = [DropShort(), FirstCopy()]
    _, _, out1 = run(tmp_path, blocks, inputs)
    markers = {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*.done.json")}
    assert len(markers) > 5
    _, _, out2 = run(tmp_path, blocks, inputs)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "work").rglob("*.done.json")} == markers
    assert (tmp_path / "work" / "fit_calls.txt").read_text() == "fit\n"
    assert [d.to_dict() for d in out1] == [d.to_dict() for d in out2]

    # A different threshold changes the first pass, so the fit after it runs again.
    _, stats, out3 = run(tmp_path, [DropShort(min_chars=45), FirstCopy()], inputs)
    assert (tmp_path / "work" / "fit_calls.txt").read_text() == "fit\nfit\n"
    assert all(len(d.text) >= 45 for d in out3) and len(out3) < len(out1)
    assert stats["blocks"][0]["docs_in"] == 60
    # Only the steps of this plan are left in the work folder (and what else was there).
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [
        "00-split", "01-pass", "02-fit-first_copy", "03-pass", "99-mixture", "fit_calls.txt"
    ]


def test_unreadable_input_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "in" / "bad.jsonl"
    path.parent.mkdir()
    lines = [
        json.dumps({"id": "a", "text": "fine document text", "source": "web"}),
        "{not json",
        json.dumps({"id": "b", "source": "web"}),
        json.dumps({"id": "c", "text": None, "source": "web"}),
        json.dumps(["a", "list"]),
        '{"id": "e", "text": "a lone surrogate \\ud800 here", "source": "web"}',
        json.dumps({"id": "d", "text": "another fine document", "source": "web"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    _, stats, out = run(tmp_path, [DropShort()], [path])
    assert [d.id for d in out] == ["a", "d"]
    assert stats["input"]["skipped_total"] == 5
    assert [e["location"] for e in stats["input"]["skipped"]["invalid_document"]["examples"]] == [
        "bad.jsonl:2", "bad.jsonl:3", "bad.jsonl:4", "bad.jsonl:5", "bad.jsonl:6"
    ]


SLOW_BLOCK = '''
import time
from typing import ClassVar
from tokenmill.curate.block import DocumentBlock

class Slow(DocumentBlock):
    name: ClassVar[str] = "slow"
    def apply(self, doc, stats):
        time.sleep(0.01)
        if doc.text.endswith("7"):
            stats.remove(doc, "slow.sevens")
            return None
        return doc
'''

DRIVER = '''
import sys
from pathlib import Path
from slowblock import Slow
from tokenmill.curate.dedup.exact import ExactDedup
from tokenmill.curate.executor import ExecutorConfig
from tokenmill.curate.mixture import Mixture
from tokenmill.curate.config import BLOCKS, CurateConfig
from tokenmill.curate.pipeline import _spec, curate, run_blocks
from tokenmill.errors import TokenmillError

if __name__ == "__main__":
    inputs = sorted(Path(sys.argv[1]).glob("*.jsonl.zst"))
    run_blocks(inputs, [Slow(), ExactDedup(partitions=2)], Mixture(weights={"web": 2.0}), ExecutorConfig(workers=1, task_bytes=300),
               Path(sys.argv[2]), Path(sys.argv[3]), seed=1, progress=False)
'''


def test_sigkill_mid_run_then_resume_keeps_exactly_the_uninterrupted_documents(tmp_path, monkeypatch):
    (tmp_path / "slowblock.py").write_text(SLOW_BLOCK)
    (tmp_path / "driver.py").write_text(DRIVER)
    docs = [Document(f"d{i:03d}", f"text number {i % 40}", "web") for i in range(120)]
    inputs = write_input(tmp_path / "in", docs, per_shard=30)
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path / "in"), str(tmp_path / "killed"), str(tmp_path / "work_killed")],
        env={**os.environ, "PYTHONPATH": str(tmp_path)}, start_new_session=True, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while len(list((tmp_path / "work_killed").glob("01-pass/*.done.json"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "work_killed").glob("01-pass/*.done.json")}
    assert len(done_before) < len(list((tmp_path / "work_killed").glob("00-split/*.jsonl.zst")))  # killed mid-pass
    assert not (tmp_path / "killed" / "stats.json").exists()

    # Resume here, in this process, and compare with an uninterrupted run.
    monkeypatch.syspath_prepend(str(tmp_path))
    from slowblock import Slow

    def again(out: str, work: str) -> list[str]:
        run_blocks(inputs, [Slow(), ExactDedup(partitions=2)], Mixture(weights={"web": 2.0}), ExecutorConfig(workers=1, task_bytes=300),
                   tmp_path / out, tmp_path / work, seed=1, progress=False)
        return [d.id for d in read_shards(shard_paths(tmp_path / out / "shards"))]

    resumed, clean = again("killed", "work_killed"), again("clean", "work_clean")
    for name, mtime in done_before.items():  # finished pieces were not redone
        assert (tmp_path / "work_killed" / "01-pass" / name).stat().st_mtime_ns == mtime
    assert resumed == clean
    assert len(resumed) == len(set(resumed))
    expected = [f"d{i:03d}" for i in range(40) if i % 10 != 7]  # first copies, minus the sevens
    assert sorted(i for i in resumed if "#" not in i) == expected
    assert sorted(resumed) == sorted(expected + [f"{i}#rep1" for i in expected])
    stats = json.loads((tmp_path / "killed" / "stats.json").read_text())
    assert stats["blocks"][0]["docs_in"] == 120 and stats["blocks"][0]["removed"]["slow.sevens"]["docs"] == 12
    assert stats["passes"][0]["tasks_resumed"] == len(done_before)


def test_a_block_named_twice_is_an_error(tmp_path):
    with pytest.raises(TokenmillError, match="once"):
        run(tmp_path, [DropShort(), DropShort(min_chars=3)], write_input(tmp_path / "in", make_docs(3)))


CONFIG_YAML = """
executor: {workers: 1, task_bytes: 20000}
c4: {filter_curly_bracket: false}
fuzzy_dedup: {threshold: 0.7, partitions: 4}
exact_dedup: {partitions: 4}
toxicity: {enabled: false}
mixture: {weights: {reference: 2.0}}
"""


def test_curate_config_runs_every_real_block_in_order(tmp_path):
    assert list(CurateConfig.model_fields) == ["executor", *BLOCKS, "mixture"]
    assert [b.name for b in CurateConfig().blocks()] == list(BLOCKS)  # stats names are the config keys
    for block in CurateConfig().blocks():
        assert _spec(block).build() == block  # what a worker rebuilds is the configured block
    with pytest.raises(ValidationError, match="fuzy_dedup"):
        CurateConfig.model_validate({"fuzy_dedup": {}})
    config = CurateConfig.model_validate(yaml.safe_load(CONFIG_YAML))
    assert (config.fuzzy_dedup.threshold, config.toxicity.enabled, config.c4.filter_curly_bracket) == (0.7, False, False)

    rng = random.Random(0)
    nouns = "interpreter module function loop value name scope class method object file list table string number".split()
    verbs = "reads returns calls builds changes checks opens closes keeps finds writes sorts".split()
    adjs = "local global empty new first last small large plain simple".split()

    def prose(n: int) -> str:
        return " ".join(
            f"The {rng.choice(adjs)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)} of the "
            f"{rng.choice(nouns)}, and then it {rng.choice(verbs)} every {rng.choice(adjs)} {rng.choice(nouns)}."
            for _ in range(n)
        )

    docs = [Document(f"ref{i:02d}", prose(12), "reference") for i in range(30)]
    docs.append(Document("ref_copy", docs[4].text, "reference"))
    docs.append(Document("mail", "Write to jane.doe@mailhost.net with questions. " + prose(10), "reference"))
    docs.append(Document("french", "Le chat dort sur le canapé pendant que la pluie tombe sur la ville. " * 8, "reference"))
    docs += [Document(f"web{i}", prose(12), "web") for i in range(10)]  # the quality classifier's negatives
    docs += [Document(f"code{i}", f"def f{i}(x):\n    return x * {i}\n", "code") for i in range(5)]
    inputs = write_input(tmp_path / "in", docs, per_shard=20)
    result = curate(inputs, config, tmp_path / "out", tmp_path / "work", seed=0)

    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert [b["name"] for b in stats["blocks"]] == [b for b in BLOCKS if b != "toxicity"]
    assert stats["disabled_blocks"] == ["toxicity"] and stats["totals"]["errors"] == 0
    by_name = {b["name"]: b for b in stats["blocks"]}
    assert by_name["language"]["removed"]["language.not_allowed"]["samples"][0]["id"] == "french"
    assert by_name["exact_dedup"]["removed"]["exact_dedup.duplicate"]["samples"][0]["id"] == "ref_copy"
    assert by_name["pii"]["counters"]["pii.email"] == 1
    out = {d.id: d for d in read_shards(shard_paths(tmp_path / "out" / "shards"))}
    assert "<EMAIL>" in out["mail"].text and "french" not in out and "ref_copy" not in out
    assert {"ppl", "ppl_bucket", "quality"} <= set(out["ref00"].meta) and "ppl" not in out["code0"].meta
    assert "ref00#rep1" in out and "code0#rep1" not in out  # reference weighs 2
    assert result["metrics"]["documents_kept"] == len(docs) - 2 - by_name["fuzzy_dedup"]["docs_in"] + by_name["fuzzy_dedup"]["docs_out"]
    assert set(result["figures"]) >= {"curation.svg", "mixture.svg"}
    assert all((tmp_path / "out" / f).is_file() for f in result["figures"])


def test_removed_samples_never_publish_pii_that_the_run_redacts(tmp_path):
    """A block before PII redaction removes a document; its sample must not show the address."""
    from tokenmill.curate.pii import PIIRedactor

    docs = [Document("a", "mail jane.doe@gmail.com now", "web"), Document("b", "a longer kept document, long enough", "web")]
    inputs = write_input(tmp_path / "in", docs)
    _, stats, out = run(tmp_path, [DropShort(min_chars=30), PIIRedactor()], inputs)
    assert [d.id for d in out] == ["b"]
    sample = stats["blocks"][0]["removed"]["drop_short.too_short"]["samples"][0]
    assert sample["excerpt"] == "mail <EMAIL> now"
    published = (tmp_path / "out" / "removed_samples.jsonl").read_text()
    assert "jane.doe" not in published and "<EMAIL>" in published

    # Without the PII block, the run keeps raw excerpts (nothing asked for redaction).
    _, stats, _ = run(tmp_path, [DropShort(min_chars=30)], inputs, name="raw", work="work2")
    assert stats["blocks"][0]["removed"]["drop_short.too_short"]["samples"][0]["excerpt"] == docs[0].text
