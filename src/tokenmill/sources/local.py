"""The built-in corpus: real text gathered offline from what the machine itself holds.

Five domains, each from a part of an ordinary Linux system with Python installed:

- code: the Python standard library's `.py` sources (tests excluded);
- reference: the language reference topics of `pydoc_data/topics.py`, and the docstrings of
  the standard library's modules, classes and functions;
- manuals: manual pages from `/usr/share/man`, rendered to text with groff;
- web: changelogs, NEWS, READMEs and copyright files from `/usr/share/doc`;
- legal: the licence texts of `/usr/share/common-licenses`.

Nothing is imported or executed: Python files are read as text and parsed with `ast`.
Each domain gets a share of `max_bytes`. When a domain holds more than its share, files are
visited in a sampling order (see `_sample_order`) and taken while they fit, so the same
machine always yields the same documents in the same order.
"""

from __future__ import annotations

import ast
import itertools
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import xxhash
from pydantic import Field, field_validator, model_validator
from tqdm import tqdm

from tokenmill.compression import (
    TRUNCATION_ERRORS,
    SpecialFileError,
    open_binary,
    strip_compression_suffix,
)
from tokenmill.sources.base import (
    SourceConfig,
    check_text,
    decode_text,
    stat_fingerprint,
    within,
)
from tokenmill.sources.document import Document, SkipLog

LocalDomain = Literal["code", "reference", "manuals", "web", "legal"]
DOMAIN_ORDER: tuple[LocalDomain, ...] = ("code", "reference", "manuals", "web", "legal")
DEFAULT_SHARES: dict[str, float] = {"code": 0.35, "reference": 0.15, "manuals": 0.2, "web": 0.25, "legal": 0.05}
# Directory names (or paths relative to the standard library) left out of `code` and of the
# docstrings: tests are mostly fixtures, site-packages is not the standard library, and
# pydoc_data holds the reference topics, which the reference domain already has as text.
DEFAULT_STDLIB_EXCLUDE = ["test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "pydoc_data"]
# The files of /usr/share/doc that read like text on the web; the rest is mostly examples and HTML assets.
WEB_FILE = re.compile(r"(changelog|news|readme)([._-].*)?|copyright", re.IGNORECASE)
MAN_SECTION = re.compile(r"man[1-8]")
PARTS_OF: dict[str, list[str]] = {
    "code": ["stdlib"],
    "reference": ["topics", "stdlib"],
    "manuals": ["man"],
    "web": ["doc"],
    "legal": ["licenses"],
}
PART_NAMES = {
    "stdlib": "Python standard library sources",
    "topics": "pydoc topics",
    "man": "manual pages",
    "doc": "package documentation",
    "licenses": "licence texts",
}
# A module whose docstrings are shorter than this is mostly one-line summaries: not worth a document.
MIN_DOCSTRING_CHARS = 200
# After this many documents in a row too large for what is left of a budget, the budget counts as full.
MAX_MISSES = 50
# No document may take more than this share of its domain's budget (or MIN_DOC_ROOM, if larger):
# otherwise a few multi-MB changelogs fill the web domain alone, and 8 MB cover 60 packages, not 300.
MAX_DOC_SHARE = 0.05
MIN_DOC_ROOM = 64_000
GROFF_TIMEOUT_S = 30
# Hyphenation and justification would split words and pad lines with spaces that no prose has.
GROFF_ARGS = ["-t", "-mandoc", "-Tutf8", "-P-cbou", "-Kutf8", "-rHY=0"]
GROFF_PRELUDE = ".ad l\n"

# Candidate files of a part: (path relative to the part's root, path).
Files = list[tuple[str, Path]]
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class _Unit:
    """One would-be document: `id` is also what the sampling order hashes."""

    id: str
    path: Path
    part: str
    group: str


class LocalCorpusSource(SourceConfig):
    """Text gathered from this machine's Python standard library, manual pages and package docs.

    Each part carries its own domain (code, reference, manuals, web, legal), so the inherited
    `domain` field is not used.
    """

    kind: Literal["local"] = "local"
    domain: str = Field("web", description="Not used: each part has its own domain (code, reference, ...).")
    max_bytes: int = Field(32_000_000, gt=0, description="Total size of the corpus, in UTF-8 bytes.")
    shares: dict[LocalDomain, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: dict(DEFAULT_SHARES),
        description="Share of max_bytes per domain, normalised over `include`; domains not given keep their default.",
    )
    include: list[LocalDomain] = Field(default_factory=lambda: list(DOMAIN_ORDER), min_length=1)
    stdlib_dir: Path | None = Field(None, description="Python standard library; default: this interpreter's.")
    stdlib_exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_STDLIB_EXCLUDE))
    man_dir: Path = Path("/usr/share/man")
    doc_dir: Path = Path("/usr/share/doc")
    licenses_dir: Path = Path("/usr/share/common-licenses")

    @field_validator("shares")
    @classmethod
    def _merge_default_shares(cls, shares: dict[str, float]) -> dict[str, float]:
        return {**DEFAULT_SHARES, **shares}

    @model_validator(mode="after")
    def _some_share_included(self) -> LocalCorpusSource:
        if sum(self.shares[d] for d in set(self.include)) <= 0:
            raise ValueError("the shares of the included domains add up to 0")
        return self

    # -- where things are -------------------------------------------------------------------

    def _roots(self) -> dict[str, Path]:
        stdlib = self.stdlib_dir or Path(sysconfig.get_paths()["stdlib"])
        return {
            "stdlib": stdlib,
            "topics": stdlib / "pydoc_data" / "topics.py",
            "man": self.man_dir,
            "doc": self.doc_dir,
            "licenses": self.licenses_dir,
        }

    def _parts(self) -> list[str]:
        return list(dict.fromkeys(p for d in self._domains() for p in PARTS_OF[d]))

    def _domains(self) -> list[LocalDomain]:
        return [d for d in DOMAIN_ORDER if d in self.include]

    def _files(self, part: str, skips: SkipLog) -> Files:
        """The candidate files of a part as (path relative to its root, path); empty when missing."""
        root = self._roots()[part]
        if part == "topics":
            return [("topics.py", root)] if root.is_file() else []
        if part == "stdlib":
            excluded = set(self.stdlib_exclude)
            return _walk(root, skips, lambda d: not {d, d.rsplit("/", 1)[-1]} & excluded, lambda f: f.endswith(".py"))
        if part == "man":
            # Only the English sections: the other directories of man_dir hold translations.
            return _walk(root, skips, lambda d: MAN_SECTION.fullmatch(d) is not None, lambda f: "/" in f)
        if part == "doc":
            return _walk(root, skips, lambda d: True, lambda f: bool(WEB_FILE.fullmatch(strip_compression_suffix(f))))
        return _walk(root, skips, lambda d: False, lambda f: True)

    # -- the source interface ---------------------------------------------------------------

    def fingerprint(self) -> str:
        paths = [p for part in self._parts() for _, p in self._files(part, SkipLog())]
        extra = [self.model_dump_json(), *map(str, self._roots().values())]
        groff = shutil.which("groff")
        if "manuals" in self.include and groff:
            extra.append(_groff_version(groff))
        return stat_fingerprint(paths, *extra)

    def read(self, skips: SkipLog) -> Iterator[Document]:
        files: dict[str, Files] = {}
        for part in self._parts():
            files[part] = self._files(part, skips)
            if not files[part]:
                where = self._roots()[part]
                print(f"local corpus: no {PART_NAMES[part]} at {where}, skipped", file=sys.stderr)
                skips.skip("missing_part", str(where))
        domains = self._domains()
        total_share = sum(self.shares[d] for d in domains)
        topics = _read_topics(files["topics"][0][1], skips) if files.get("topics") else {}
        for domain in domains:
            budget = int(self.max_bytes * self.shares[domain] / total_share)
            units = _sample_order(self._units(domain, files, topics)) if budget > 0 else []
            if not units:
                continue
            with closing(self._texts(domain, units, topics, skips)) as texts:
                yield from _fill(domain, budget, units, texts)

    # -- units and their texts --------------------------------------------------------------

    def _units(self, domain: LocalDomain, files: dict[str, Files], topics: dict[str, str]) -> list[_Unit]:
        """Every would-be document of a domain; units of one group take turns with other groups' (see _sample_order)."""
        if domain == "code":
            return [_Unit(f"stdlib/{rel}", p, "stdlib", rel.split("/")[0]) for rel, p in files["stdlib"]]
        if domain == "reference":
            topic_units = [
                _Unit(f"pydoc/topics/{key}", p, "pydoc_topics", f"topic:{key}")
                for _, p in files["topics"]
                for key in sorted(topics)
            ]
            modules = [(_module_name(rel), p) for rel, p in files["stdlib"]]
            return topic_units + [_Unit(f"docstrings/{m}", p, "docstrings", m.split(".")[0]) for m, p in modules]
        if domain == "manuals":
            return [_Unit(i, p, "man", _man_family(p.name)) for i, p in _ids("man", files["man"])]
        if domain == "web":
            return [_Unit(i, p, "doc", i.split("/")[1]) for i, p in _ids("doc", files["doc"])]
        return [_Unit(f"licenses/{rel}", p, "licenses", rel) for rel, p in files["licenses"]]

    def _texts(
        self, domain: LocalDomain, units: list[_Unit], topics: dict[str, str], skips: SkipLog
    ) -> Iterator[str | None]:
        """The text of each unit, in order; None for one that gives no document (recorded in `skips`)."""
        limit = self.max_doc_bytes
        if domain == "manuals":
            groff = shutil.which("groff")
            if groff is None:
                print("local corpus: groff not found, manual pages converted by a troff stripper", file=sys.stderr)
            # groff runs as a subprocess, so threads are enough to keep every core busy.
            workers = min(8, os.cpu_count() or 1)
            with closing(_ordered_map(lambda u: _render_page(u.path, groff, limit), units, workers)) as pages:
                for text, page_skips in pages:
                    skips.merge(page_skips)  # in unit order, so the examples kept are deterministic
                    yield text
            return
        for unit in units:
            if unit.part == "pydoc_topics":
                yield check_text(topics[unit.id.removeprefix("pydoc/topics/")], skips, unit.id, limit)
            elif unit.part == "docstrings":
                # The code domain reads the same files: record what it cannot read only once.
                read_skips = SkipLog()
                source = _read(unit.path, read_skips, limit)
                if "code" not in self.include:
                    skips.merge(read_skips)
                yield None if source is None else _docstrings(source, unit.id.split("/", 1)[1], unit.path, skips)
            else:
                yield _read(unit.path, skips, limit)


def _fill(domain: str, budget: int, units: list[_Unit], texts: Iterable[str | None]) -> Iterator[Document]:
    """Documents taken in order while they fit the budget.

    One too large for what is left of the budget, or for MAX_DOC_SHARE of it, is passed over:
    that is sampling, not a skip.
    """
    left, misses = budget, 0
    with tqdm(total=budget, unit="B", unit_scale=True, desc=f"local {domain}", file=sys.stderr, disable=None) as bar:
        for unit, text in zip(units, texts, strict=False):
            if text is None:
                continue
            size = len(text.encode("utf-8"))
            if size > max(budget * MAX_DOC_SHARE, MIN_DOC_ROOM):
                continue
            if size > left:
                misses += 1
                if misses >= MAX_MISSES:
                    break
                continue
            misses = 0
            left -= size
            bar.update(size)
            meta = {"location": os.path.realpath(unit.path), "part": unit.part}
            if domain == "code":
                meta["language"] = "python"
            yield Document(id=unit.id, text=text, source=domain, meta=meta)
            if left == 0:
                break


def _sample_order(units: list[_Unit]) -> list[_Unit]:
    """Units in the order they are offered to a budget: groups take turns, each group's units
    and the groups themselves in the order of a hash of their names.

    The hash spreads a sample over the whole tree instead of the alphabetically first
    packages, and the turns keep one large family (thousands of generated pages of one
    command) from crowding out the others.
    """
    groups: dict[str, list[_Unit]] = {}
    for unit in units:
        groups.setdefault(unit.group, []).append(unit)
    queues = [sorted(g, key=lambda u: _hash(u.id)) for _, g in sorted(groups.items(), key=lambda kv: _hash(kv[0]))]
    return [u for turn in itertools.zip_longest(*queues) for u in turn if u is not None]


def _hash(name: str) -> int:
    return xxhash.xxh3_64_intdigest(name.encode("utf-8"))


def _walk(root: Path, skips: SkipLog, keep_dir: Callable[[str], bool], keep_file: Callable[[str], bool]) -> Files:
    """Files under `root` as (relative path, path), each real file once, sorted within directories.

    Linked directories are not entered: they repeat a tree already walked or lead out of it.
    A linked file that leads out of `root`, or to a file already taken, is recorded and left out;
    regular files are taken first, so an alias never displaces the file it names.
    """
    regular: Files = []
    links: Files = []

    def visit(directory: str, prefix: str) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as e:
            skips.skip("unreadable", directory, str(e))
            return
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                if keep_file(rel):
                    links.append((rel, Path(entry.path)))
            elif entry.is_dir():
                if keep_dir(rel):
                    visit(entry.path, rel + "/")
            elif entry.is_file() and keep_file(rel):
                regular.append((rel, Path(entry.path)))

    if not root.is_dir():
        return []
    visit(str(root), "")
    real_root = os.path.realpath(root)
    # No linked directory is entered, so a regular file's real path is the real root plus its path.
    taken = {os.path.join(real_root, rel) for rel, _ in regular}
    kept = list(regular)
    for rel, path in links:
        target = os.path.realpath(path)
        if not os.path.isfile(target):
            if not os.path.exists(target):
                skips.skip("broken_link", str(path), target)
        elif not within(target, real_root):
            skips.skip("outside_root", str(path), target)
        elif target in taken:
            skips.skip("duplicate", str(path), f"same file as {target}")
        else:
            taken.add(target)
            kept.append((rel, path))
    return kept


def _ids(prefix: str, files: Files) -> Files:
    """Ids without the compression suffix ("man/man1/ls.1"), unless another file already has that id."""
    rels = {rel for rel, _ in files}
    used: set[str] = set()
    out = []
    for rel, path in files:
        name = rel.rsplit("/", 1)[-1]
        short = rel[: len(rel) - len(name)] + strip_compression_suffix(name)
        chosen = short if short == rel or (short not in rels and short not in used) else rel
        used.add(chosen)
        out.append((f"{prefix}/{chosen}", path))
    return out


def _read(path: Path, skips: SkipLog, max_bytes: int) -> str | None:
    """The text of a file, or None (recorded in `skips`). The folders read are the system's own,
    which a package manager may be changing meanwhile: a file gone or swapped since it was
    listed is a skip, never the end of the run."""
    location = str(path)
    try:
        with open_binary(path) as f:
            raw = f.read(max_bytes + 1)  # enough to tell a too-large file without reading all of it
    except TRUNCATION_ERRORS as e:
        skips.skip("truncated", location, str(e))
        return None
    except SpecialFileError as e:
        skips.skip("special_file", location, str(e))
        return None
    except OSError as e:
        skips.skip("unreadable", location, str(e))
        return None
    return decode_text(raw, skips, location, max_bytes)


def _parse(source: str, path: Path, skips: SkipLog) -> ast.Module | None:
    try:
        # Old escape sequences in a string are a SyntaxWarning on recent Pythons: noise here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as e:
        skips.skip("unparsable", str(path), str(e))
        return None


def _read_topics(path: Path, skips: SkipLog) -> dict[str, str]:
    """The `topics` dict of pydoc_data/topics.py, read as a literal: the module is never imported."""
    # The file is one big dict of many documents: max_doc_bytes applies to each topic, not to it.
    source = _read(path, skips, 100_000_000)
    tree = _parse(source, path, skips) if source is not None else None
    for node in tree.body if tree else []:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "topics" for t in node.targets):
            try:
                topics = ast.literal_eval(node.value)
            except ValueError as e:
                skips.skip("unparsable", str(path), str(e))
                return {}
            return {str(k): v for k, v in topics.items() if isinstance(v, str)} if isinstance(topics, dict) else {}
    return {}


def _module_name(rel: str) -> str:
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _docstrings(source: str, module: str, path: Path, skips: SkipLog) -> str | None:
    """A module's docstrings and those of its classes and functions, each under its qualified name.

    None when they add up to less than MIN_DOCSTRING_CHARS: not a skip, just nothing to say.
    """
    tree = _parse(source, path, skips)
    if tree is None:
        return None
    sections: list[str] = []

    def visit(node: ast.AST, name: str, rule: str) -> None:
        doc = ast.get_docstring(node)  # type: ignore[arg-type]
        if doc and doc.strip():
            sections.append(f"{name}\n{rule * len(name)}\n\n{doc.strip()}")
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, f"{name}.{child.name}", "-")

    visit(tree, module, "=")
    text = "\n\n\n".join(sections)
    return text if sum(len(s) for s in sections) >= MIN_DOCSTRING_CHARS else None


def _man_family(filename: str) -> str:
    """The command family of a page ("git" for git-commit.1.gz, "gcloud" for gcloud_beta_x.1.gz)."""
    m = re.match(r"[A-Za-z0-9]+", filename)
    return m.group(0) if m else filename


def _groff_version(groff: str) -> str:
    try:
        out = subprocess.run([groff, "--version"], capture_output=True, text=True, timeout=GROFF_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return "groff: unknown version"
    return out.stdout.splitlines()[0] if out.stdout else "groff: unknown version"


def _ordered_map(fn: Callable[[T], R], items: list[T], workers: int) -> Iterator[R]:
    """`fn` over `items` on a thread pool, results in input order.

    Only a few calls run ahead of the consumer, so one that stops early wastes little work.
    """
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[R]] = deque()
        upcoming = iter(items)
        try:
            for item in itertools.islice(upcoming, workers * 4):
                pending.append(pool.submit(fn, item))
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(upcoming, 1):
                    pending.append(pool.submit(fn, item))
                yield result
        finally:
            for future in pending:
                future.cancel()


def _render_page(path: Path, groff: str | None, max_bytes: int) -> tuple[str | None, SkipLog]:
    """A manual page as text, with what was skipped in a log of its own (this runs on a thread)."""
    skips = SkipLog()
    location = str(path)
    source = _read(path, skips, max_bytes)
    if source is None:
        return None, skips
    body = [ln for ln in source.splitlines() if ln.strip() and not ln.startswith(('.\\"', "'\\\""))]
    if len(body) == 1 and body[0].startswith(".so "):
        skips.skip("duplicate", location, f"alias of {body[0][4:].strip()}")
        return None, skips
    if groff is None:
        text = _strip_troff(source)
    else:
        try:
            done = subprocess.run(
                [groff, *GROFF_ARGS],
                input=(GROFF_PRELUDE + source).encode("utf-8"),
                capture_output=True,
                timeout=GROFF_TIMEOUT_S,
                env={**os.environ, "LC_ALL": "C.UTF-8", "GROFF_NO_SGR": "1"},
            )
        except subprocess.TimeoutExpired:
            skips.skip("render_timeout", location, f"groff took over {GROFF_TIMEOUT_S} s")
            return None, skips
        except OSError as e:
            skips.skip("render_failed", location, str(e))
            return None, skips
        if done.returncode != 0 and not done.stdout.strip():
            skips.skip("render_failed", location, done.stderr.decode("utf-8", "replace")[-300:])
            return None, skips
        text = done.stdout.decode("utf-8", errors="replace")
    text = re.sub(r".\x08", "", text)  # overstrike bold and underline, should a formatter still emit them
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(ln.rstrip() for ln in text.splitlines())).strip("\n")
    return check_text(text, skips, location, max_bytes), skips


# -- a plain troff stripper, for machines without groff ---------------------------------------

_TROFF_CHARS = {"aq": "'", "dq": '"', "em": "—", "en": "–", "bu": "•", "lq": "“", "rq": "”", "hy": "-", "mi": "-"}
_TROFF_ESCAPE = re.compile(r"\\(\((..)|\[([^]]*)\]|f(?:\(..|\[[^]]*\]|.)|s[+-]?\d+|\*(?:\(..|\[[^]]*\]|.)|.)")
_TROFF_ARG = re.compile(r'"([^"]*)"|(\S+)')


def _troff_escape(m: re.Match[str]) -> str:
    special = m.group(2) or m.group(3)
    if special is not None:
        return _TROFF_CHARS.get(special, "")
    return {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " "}.get(m.group(1), "")


def _strip_troff(source: str) -> str:
    """Text of man(7) source: requests dropped, text-bearing macros kept, common escapes resolved.

    Far rougher than groff (tables and mdoc pages come out raw), but better than no manuals.
    """
    lines: list[str] = []
    for line in source.splitlines():
        if not line.startswith((".", "'")):
            lines.append(line)
            continue
        m = re.match(r"[.']\s*(\w+)\s*(.*)", line)
        if m is None:
            continue
        name, rest = m.groups()
        args = [a or b for a, b in _TROFF_ARG.findall(rest)]
        if name in ("SH", "SS"):
            lines += ["", " ".join(args)]
        elif name in ("B", "I", "SM", "SB"):
            lines.append(" ".join(args))
        elif name in ("BR", "BI", "IB", "IR", "RB", "RI"):
            lines.append("".join(args))  # alternating fonts join their arguments: `.BR ls (1)` is "ls(1)"
        elif name in ("PP", "LP", "P", "TP", "IP", "sp", "br"):
            lines.append("")
            if name == "IP" and args:
                lines.append(args[0])
    text = _TROFF_ESCAPE.sub(_troff_escape, "\n".join(lines))
    return re.sub(r"\n{3,}", "\n\n", text).strip()
