"""The tiny corpus of the alignment tests: real documented items (stdlib modules) and
man-page-shaped documents written here."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from tokenmill.sources.document import Document

STDLIB = [
    "textwrap.py", "shlex.py", "bisect.py", "heapq.py", "colorsys.py", "fnmatch.py", "glob.py", "keyword.py",
    "calendar.py", "difflib.py", "statistics.py", "shutil.py", "string.py", "queue.py",
]
# (name, section, summary) of man pages, written for these tests in the format of man(1) output.
MAN = [
    ("frobnicate", "1", "adjust the frobnication level of a file"),
    ("quuxctl", "8", "control the quux daemon"),
    ("wibble", "1", "print a line of wibbles"),
    ("zapfd", "2", "close every descriptor above a number"),
    ("plonk", "1", "drop a file into the nearest bucket"),
    ("grumble", "6", "complain about the weather in verse"),
]


def man_page(name: str, section: str, summary: str) -> str:
    head = f"{name.upper()}({section})"
    return (
        f"{head}{' ' * 20}General Commands Manual{' ' * 20}{head}\n\nNAME\n       {name} - {summary}\n\n"
        f"SYNOPSIS\n       {name} [option]... file...\n\nDESCRIPTION\n       {name} does what it says.\n"
    )


def documents() -> list[Document]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    docs = [
        Document(f"stdlib/{n}", (lib / n).read_text(encoding="utf-8"), "code", {"language": "python"}) for n in STDLIB
    ]
    docs += [Document(f"man/man{s}/{n}.{s}", man_page(n, s, w), "manuals") for n, s, w in MAN]
    docs.append(Document("web/0", "Plain prose that documents nothing in particular.", "web"))
    return docs
