"""Folders of text files: one document per file, its domain chosen by what kind of file it is.

Code (by extension, well-known name or `#!` line) is tagged with its language and goes to
`code_domain`; LaTeX sources are kept verbatim for `latex_domain`; HTML pages are reduced to
their main text; Markdown, reStructuredText, plain text and extension-less files are prose.
Files of any other type (images, archives, data such as JSON or CSV) are skipped as
"unknown_type" without being read, unless `include` names them: then they are read as prose.

A folder may come from anyone, so no symbolic link is followed out of it ("outside_root"),
and FIFOs, devices, sockets and the kernel's files under /proc and /sys are skipped as
"special_file" without being opened in a way that could block.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field

from tokenmill.compression import SpecialFileError, open_regular
from tokenmill.errors import TokenmillError
from tokenmill.sources.base import (
    SourceConfig,
    decode_text,
    fixed_prefix,
    glob_paths,
    replace_surrogates,
    stat_fingerprint,
    within,
)
from tokenmill.sources.document import Document, SkipLog
from tokenmill.sources.html import EXTRACTOR_VERSION, extract_page

# Programming languages and the configuration languages that live next to them in a
# repository. Data formats (JSON, CSV, XML) are not code: their text teaches no programming.
LANGUAGES = {
    ".py": "python", ".pyi": "python", ".pyx": "cython",
    ".c": "c", ".h": "c",
    ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".hh": "cpp", ".hpp": "cpp", ".hxx": "cpp",
    ".cu": "cuda", ".cuh": "cuda",
    ".cs": "csharp", ".java": "java", ".kt": "kotlin", ".kts": "kotlin", ".scala": "scala",
    ".go": "go", ".rs": "rust", ".swift": "swift", ".zig": "zig", ".dart": "dart",
    ".js": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".jsx": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript",
    ".php": "php", ".rb": "ruby", ".pl": "perl", ".pm": "perl", ".lua": "lua", ".r": "r",
    ".jl": "julia", ".hs": "haskell", ".ml": "ocaml", ".mli": "ocaml", ".ex": "elixir",
    ".exs": "elixir", ".erl": "erlang", ".clj": "clojure", ".lisp": "lisp", ".el": "elisp",
    ".f90": "fortran", ".f95": "fortran", ".sh": "shell", ".bash": "shell", ".zsh": "shell",
    ".ps1": "powershell", ".sql": "sql", ".css": "css", ".scss": "scss", ".vue": "vue",
    ".mk": "makefile", ".cmake": "cmake", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml",
}  # fmt: skip
# Files known by their whole name; checked before the extension (CMakeLists.txt is not prose).
NAMED_LANGUAGES = {
    "makefile": "makefile", "gnumakefile": "makefile", "dockerfile": "dockerfile",
    "cmakelists.txt": "cmake", "rakefile": "ruby", "gemfile": "ruby", "vagrantfile": "ruby",
    "jenkinsfile": "groovy",
}  # fmt: skip
# Interpreters named on a `#!` line of an extension-less script.
SHEBANG_LANGUAGES = {
    "python": "python", "sh": "shell", "bash": "shell", "zsh": "shell",
    "perl": "perl", "ruby": "ruby", "node": "javascript", "lua": "lua", "Rscript": "r",
}  # fmt: skip
LATEX_SUFFIXES = (".tex", ".bib", ".sty", ".cls")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
PROSE_SUFFIXES = (".md", ".markdown", ".rst", ".txt", ".text")

Kind = Literal["code", "latex", "html", "prose"]


class _File(NamedTuple):
    path: Path
    id: str
    boundary: str | None  # the real path of the folder it must stay in; None: may lead anywhere


class TextFolderSource(SourceConfig):
    """Folders, files and glob patterns of text files: one document per file."""

    kind: Literal["text"] = "text"
    paths: list[str]
    domain: str = Field("web", description="Domain of prose and HTML files.")
    code_domain: str = "code"
    latex_domain: str = "papers"
    include: list[str] | None = Field(None, description="Read only files matching one of these globs.")
    exclude: list[str] = Field(default_factory=list, description="Leave out files matching one of these globs.")

    def fingerprint(self) -> str:
        return stat_fingerprint([f.path for f in self.files()], self.model_dump_json(), EXTRACTOR_VERSION)

    def read(self, skips: SkipLog) -> Iterator[Document]:
        for file in self.files(skips):
            doc = self._document(file, skips)
            if doc is not None:
                yield doc

    def files(self, skips: SkipLog | None = None) -> list[_File]:
        """Each file to read, in a stable order, with its id and the folder it must stay in.

        The id is the path below the folder the file was found under, prefixed by that
        folder's name (the whole folder path where two folders share a name). A file named
        directly was found under its parent, and may be a link to anywhere: its reader chose
        it; one matched by a glob pattern must stay in the folder the pattern starts from.
        Hidden folders and files inside a folder are left out; `skips`, when given, counts the
        folders that cannot be listed and the linked folders that lead out.
        """
        found: list[tuple[Path, Path, str | None]] = []  # (root, file, boundary)
        for pattern in self.paths:
            pattern = os.path.expanduser(pattern)
            matches = glob_paths(pattern)
            if not matches:
                raise TokenmillError(f"input not found: {pattern}")
            pattern_root = os.path.realpath(fixed_prefix(pattern)) if glob.has_magic(pattern) else None
            for match in map(Path, matches):
                if match.is_dir():
                    boundary = os.path.realpath(match)
                    if pattern_root is not None and not within(boundary, pattern_root):
                        if skips is not None:  # a linked folder the pattern went through
                            skips.skip("outside_root", str(match), f"a link to {boundary}")
                        continue
                    found.extend((match, f, boundary) for f in _walk(match, boundary, skips))
                else:
                    found.append((match.parent, match, pattern_root))
        resolved = {root: root.resolve() for root in {root for root, _, _ in found}}
        shared = {name for name, n in Counter(r.name for r in set(resolved.values())).items() if n > 1}
        seen: set[Path] = set()
        files = []
        for root, path, boundary in found:
            rel = path.relative_to(root).as_posix()
            if path in seen or not self._selected(path.name, rel):
                continue
            seen.add(path)
            name = resolved[root].name
            prefix = root.as_posix() if name in shared or not name else name
            files.append(_File(path, f"{prefix}/{rel}", boundary))
        return files

    def _selected(self, name: str, rel: str) -> bool:
        # A pattern with a slash matches the path below the folder, any other the file name.
        def matches(pattern: str) -> bool:
            return fnmatch.fnmatch(rel if "/" in pattern else name, pattern)

        if any(map(matches, self.exclude)):
            return False
        return self.include is None or any(map(matches, self.include))

    def _document(self, file: _File, skips: SkipLog) -> Document | None:
        path = file.path
        # A file name that is not UTF-8 decodes to lone surrogates, which no shard can hold.
        location, doc_id = replace_surrogates(str(path)), replace_surrogates(file.id)
        kind, language = classify(path.name)
        if kind is None:
            if self.include is None:  # when set, `include` named this file: read it as prose
                skips.skip("unknown_type", location, path.suffix)
                return None
            kind = "prose"
        raw = self._read(file, location, skips)
        if raw is None:
            return None
        text = decode_text(raw, skips, location, self.max_doc_bytes)
        if text is None:
            return None
        if kind == "prose" and not path.suffix:
            language = _shebang_language(text)
            kind = "code" if language else kind
        meta: dict[str, str] = {"location": location}
        if kind == "html":
            page = extract_page(text)
            if page is None:
                skips.skip("no_main_text", location)
                return None
            text, meta["format"] = page.text, "html"
            if page.title:
                meta["title"] = page.title
        if language:
            meta["language"] = language
        domain = {"code": self.code_domain, "latex": self.latex_domain}.get(kind, self.domain)
        return Document(id=doc_id, text=text, source=domain, meta=meta)

    def _read(self, file: _File, location: str, skips: SkipLog) -> bytes | None:
        # The real path is checked, and that path is opened: not the link, which could be re-pointed.
        target = os.path.realpath(file.path)
        if file.boundary is not None and not within(target, file.boundary):
            skips.skip("outside_root", location, f"a link to {target}")
            return None
        try:
            with open_regular(target) as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.max_doc_bytes:  # checked before reading a multi-GB file
                    skips.skip("too_large", location, f"{size:,} bytes > max_doc_bytes {self.max_doc_bytes:,}")
                    return None
                # One byte more than the limit tells decode_text that a growing file got too large.
                return f.read(self.max_doc_bytes + 1)
        except SpecialFileError as e:
            skips.skip("special_file", location, str(e))
            return None
        except OSError as e:  # gone or turned into a folder since it was listed, a disk error
            skips.skip("unreadable", location, e.strerror or str(e))
            return None


def classify(name: str) -> tuple[Kind | None, str | None]:
    """(kind, language) of a file by its name; kind is None for a type that is not read."""
    lower = name.lower()
    if lower in NAMED_LANGUAGES or lower.startswith("dockerfile."):
        return "code", NAMED_LANGUAGES.get(lower, "dockerfile")
    suffix = os.path.splitext(lower)[1]
    if suffix in LANGUAGES:
        return "code", LANGUAGES[suffix]
    if suffix in LATEX_SUFFIXES:
        return "latex", "latex"
    if suffix in HTML_SUFFIXES:
        return "html", None
    if suffix in PROSE_SUFFIXES or not suffix:
        return "prose", None
    return None, None


def _shebang_language(text: str) -> str | None:
    if not text.startswith("#!"):
        return None
    words = text.split("\n", 1)[0][2:].replace("/", " ").split()
    # "#!/usr/bin/env python3" names the interpreter after env, "#!/bin/sh -e" before options.
    names = [w for w in words if not w.startswith("-") and w not in ("usr", "bin", "local", "env")]
    return SHEBANG_LANGUAGES.get(names[0].rstrip("0123456789.")) if names else None


def _walk(folder: Path, boundary: str, skips: SkipLog | None) -> Iterator[Path]:
    """Files below `folder`, sorted, without hidden folders and files (.git, .DS_Store).

    Linked folders are not entered (os.walk does not follow them): those inside `boundary`
    repeat what is walked anyway, those that lead out are recorded as "outside_root".
    """

    def unreadable(error: OSError) -> None:
        if skips is not None:
            skips.skip("unreadable", str(error.filename or folder), error.strerror or str(error))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in dirnames:
            link = os.path.join(dirpath, name)
            if skips is not None and os.path.islink(link) and not within(os.path.realpath(link), boundary):
                skips.skip("outside_root", link, f"a link to {os.path.realpath(link)}")
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath, name)
