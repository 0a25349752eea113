"""TextFolderSource: one document per file, domain and language by the kind of file."""

from __future__ import annotations

import os
import socket
import threading
from collections import Counter
from pathlib import Path

import pytest

from tokenmill.errors import TokenmillError
from tokenmill.sources.document import SkipLog
from tokenmill.sources.textdir import TextFolderSource, classify

PYTHON = 'def greet(name):\n    """Say hello."""\n    return f"hello {name}"\n'
RUST = 'fn main() {\n    println!("hello");\n}\n'
MAKEFILE = "all:\n\tcc -o hello hello.c\n"
LATEX = "\\documentclass{article}\n\\begin{document}\nWe prove $e^{i\\pi} + 1 = 0$.\n\\end{document}\n"
README = "# Project\n\nThis project greets people by name.\n"
SCRIPT = "#!/usr/bin/env bash\nset -e\necho deploy\n"
ARTICLE = [
    "The committee met on Tuesday to review the new reading room, which opened to the public last month "
    "after two years of work on the old library building.",
    "Visitors have praised the long tables and the quiet, and the committee agreed to keep the room open "
    "in the evenings through the winter.",
]
HTML = f"""<html><head><title>Reading room</title><script>var tracker = "trackVisitorNow";</script></head>
<body><nav><ul><li><a href="/">Home page</a></li><li><a href="/events">Upcoming events</a></li></ul></nav>
<article>{"".join(f"<p>{p}</p>" for p in ARTICLE)}</article>
<footer>Copyright Library Friends Association</footer></body></html>"""


def make_project(root: Path) -> Path:
    project = root / "project"
    files = {
        "src/main.py": PYTHON,
        "src/lib.rs": RUST,
        "Makefile": MAKEFILE,
        "paper/paper.tex": LATEX,
        "README.md": README,
        "site/index.html": HTML,
        "tools/deploy": SCRIPT,
        ".git/config": "[core]\n\tbare = false\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".hidden.md": "a hidden note\n",
    }
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    (project / "blob").write_bytes(b"\x7fELF\x02\x01\x00\x00binary")
    (project / "latin.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    (project / "empty.md").write_text("")
    (project / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (project / "data.json").write_text('{"a": 1}\n')
    (project / "broken-link").symlink_to(project / "missing-target")
    return project


def read(*paths: Path, **options) -> tuple[list, SkipLog]:
    skips = SkipLog()
    docs = list(TextFolderSource(paths=[str(p) for p in paths], **options).documents(skips))
    return docs, skips


def test_folder_of_mixed_files(tmp_path: Path) -> None:
    project = make_project(tmp_path)

    docs, skips = read(project)

    assert [(d.id, d.source, d.meta.get("language")) for d in docs] == [
        ("project/Makefile", "code", "makefile"),
        ("project/README.md", "web", None),
        ("project/latin.txt", "web", None),
        ("project/paper/paper.tex", "papers", "latex"),
        ("project/site/index.html", "web", None),
        ("project/src/lib.rs", "code", "rust"),
        ("project/src/main.py", "code", "python"),
        ("project/tools/deploy", "code", "shell"),
    ]
    texts = {d.id: d.text for d in docs}
    assert texts["project/src/main.py"] == PYTHON
    assert texts["project/src/lib.rs"] == RUST
    assert texts["project/Makefile"] == MAKEFILE
    assert texts["project/paper/paper.tex"] == LATEX
    assert texts["project/README.md"] == README
    assert texts["project/tools/deploy"] == SCRIPT
    assert texts["project/latin.txt"] == "caf\ufffd au lait\n"
    assert texts["project/site/index.html"] == "\n".join(ARTICLE)
    for boilerplate in ("Home page", "Upcoming events", "trackVisitorNow", "Copyright"):
        assert boilerplate not in texts["project/site/index.html"]
    html = docs[4]
    assert html.meta == {"location": str(project / "site/index.html"), "format": "html", "title": "Reading room"}
    assert docs[6].meta == {"location": str(project / "src/main.py"), "language": "python"}
    assert skips.skipped == Counter({"binary": 1, "empty": 1, "unknown_type": 2, "unreadable": 1})
    assert skips.repaired == Counter({"invalid_utf8": 1})
    examples = skips.summary()["skipped"]
    assert [e["location"] for e in examples["unknown_type"]["examples"]] == [
        str(project / "data.json"),
        str(project / "image.png"),
    ]
    assert examples["unreadable"]["examples"][0]["location"] == str(project / "broken-link")
    assert examples["binary"]["examples"][0]["location"] == str(project / "blob")


def test_domains_include_exclude_and_limit(tmp_path: Path) -> None:
    project = make_project(tmp_path)

    docs, skips = read(project, domain="manuals", code_domain="software", latex_domain="science", include=["*.json", "src/*"])
    assert [(d.id, d.source, d.meta.get("language")) for d in docs] == [
        ("project/data.json", "manuals", None),
        ("project/src/lib.rs", "software", "rust"),
        ("project/src/main.py", "software", "python"),
    ]
    assert not skips.skipped

    docs, _ = read(project, exclude=["*.rs", "paper/*", "site/*", "tools/*"])
    assert [d.id for d in docs] == ["project/Makefile", "project/README.md", "project/latin.txt", "project/src/main.py"]

    docs, _ = read(project, limit=2)
    assert [d.id for d in docs] == ["project/Makefile", "project/README.md"]


def test_files_globs_and_folders_sharing_a_name(tmp_path: Path) -> None:
    for parent in ("a", "b"):
        (tmp_path / parent / "docs").mkdir(parents=True)
        (tmp_path / parent / "docs" / "guide.md").write_text(f"guide {parent}\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "one.txt").write_text("one\n")
    (tmp_path / "notes" / "two.txt").write_text("two\n")

    docs, _ = read(tmp_path / "a" / "docs", tmp_path / "b" / "docs")
    assert [d.id for d in docs] == [f"{tmp_path}/a/docs/guide.md", f"{tmp_path}/b/docs/guide.md"]

    # A file named directly is found under its parent; a file named twice is read once.
    docs, _ = read(tmp_path / "notes" / "two.txt", tmp_path / "notes" / "*.txt")
    assert [(d.id, d.text) for d in docs] == [("notes/two.txt", "two\n"), ("notes/one.txt", "one\n")]

    # A name that is not UTF-8 becomes a readable id that a UTF-8 shard can hold.
    latin_name = tmp_path / "latin"
    latin_name.mkdir()
    (latin_name / os.fsdecode(b"caf\xe9.txt")).write_text("coffee\n")
    docs, _ = read(latin_name)
    assert [(d.id, d.meta["location"]) for d in docs] == [("latin/caf\ufffd.txt", f"{latin_name}/caf\ufffd.txt")]

    with pytest.raises(TokenmillError, match="input not found"):
        read(tmp_path / "nowhere")


def test_too_large_and_fingerprint(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("x" * 200)
    (tmp_path / "small.txt").write_text("small\n")

    docs, skips = read(tmp_path, max_doc_bytes=100)
    assert [d.id for d in docs] == [f"{tmp_path.name}/small.txt"]
    assert skips.skipped == Counter({"too_large": 1})

    source = TextFolderSource(paths=[str(tmp_path)])
    before = source.fingerprint()
    (tmp_path / "small.txt").write_text("changed, and longer\n")
    assert source.fingerprint() != before


def test_classify() -> None:
    assert classify("CMakeLists.txt") == ("code", "cmake")
    assert classify("Dockerfile.dev") == ("code", "dockerfile")
    assert classify("App.TSX") == ("code", "typescript")
    assert classify("refs.bib") == ("latex", "latex")
    assert classify("page.htm") == ("html", None)
    assert classify("LICENSE") == ("prose", None)
    assert classify("table.csv") == (None, None)


def read_in_thread(*paths: Path, **options) -> tuple[list, SkipLog]:
    """`read`, failing the test instead of hanging it when reading blocks on a FIFO."""
    result: list[tuple[list, SkipLog]] = []
    thread = threading.Thread(target=lambda: result.append(read(*paths, **options)), daemon=True)
    thread.start()
    thread.join(20)
    if thread.is_alive():
        for fifo in (p for folder in paths for p in folder.rglob("*") if p.is_fifo()):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer unblocks the reader
        pytest.fail("reading blocked")
    return result[0]


def test_links_out_of_the_folder_and_special_files(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "secrets").mkdir(parents=True)
    (outside / "secret.txt").write_text("a file beside the folder\n")
    (outside / "secrets" / "key.md").write_text("a file in a folder beside it\n")
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a\n")
    (folder / "sub" / "b.txt").write_text("b\n")
    (folder / "alias.txt").symlink_to("sub/b.txt")  # stays inside: read
    (folder / "escape.txt").symlink_to(outside / "secret.txt")
    (folder / "up.txt").symlink_to("../outside/secret.txt")
    (folder / "linked").symlink_to(outside / "secrets")  # a folder out: not entered
    (folder / "zero.txt").symlink_to("/dev/zero")
    (folder / "self.txt").symlink_to("/proc/self/environ")
    os.mkfifo(folder / "pipe.txt")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "sock.txt"))

        docs, skips = read_in_thread(folder)

    assert [(d.id, d.text) for d in docs] == [("corpus/a.txt", "a\n"), ("corpus/alias.txt", "b\n"), ("corpus/sub/b.txt", "b\n")]
    assert skips.skipped == Counter({"outside_root": 5, "special_file": 2})
    examples = skips.summary()["skipped"]
    assert sorted(e["location"] for e in examples["outside_root"]["examples"]) == [
        str(folder / name) for name in ("escape.txt", "linked", "self.txt", "up.txt", "zero.txt")
    ]
    assert [e["location"] for e in examples["special_file"]["examples"]] == [str(folder / "pipe.txt"), str(folder / "sock.txt")]
    assert "a FIFO" in examples["special_file"]["examples"][0]["detail"]

    # A glob pattern stays in the folder its fixed part names, through linked files and folders alike.
    docs, skips = read(folder / "*.txt", folder / "*" / "*.md", exclude=["pipe.txt", "sock.txt"])
    assert [d.id for d in docs] == ["corpus/a.txt", "corpus/alias.txt"]
    assert skips.skipped == Counter({"outside_root": 5})
    assert str(folder / "linked" / "key.md") in [e["location"] for e in skips.summary()["skipped"]["outside_root"]["examples"]]

    # What is named directly is read wherever a link leads, unless it is not a regular file.
    docs, skips = read(folder / "escape.txt", Path("/proc/self/status"), Path("/dev/null"))
    assert [(d.id, d.text) for d in docs] == [("corpus/escape.txt", "a file beside the folder\n")]
    assert skips.skipped == Counter({"special_file": 2})


def test_files_gone_or_replaced_after_listing(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in ("a", "b", "c", "d"):
        (folder / f"{name}.txt").write_text(f"{name}\n")
    (folder / "dangling.txt").symlink_to(folder / "missing.txt")
    source = TextFolderSource(paths=[str(folder)])
    assert source.fingerprint() == source.fingerprint()  # the dangling link is listed, and fine

    skips = SkipLog()
    documents = source.documents(skips)
    assert next(documents).text == "a\n"  # every file is listed by now
    (folder / "b.txt").unlink()
    (folder / "c.txt").unlink()
    (folder / "c.txt").mkdir()
    (folder / "d.txt").unlink()
    os.mkfifo(folder / "d.txt")

    assert list(documents) == []
    assert skips.skipped == Counter({"unreadable": 3, "special_file": 1})
    assert [e["location"] for e in skips.summary()["skipped"]["unreadable"]["examples"]] == [
        str(folder / name) for name in ("b.txt", "c.txt", "dangling.txt")
    ]


def test_double_star_through_a_link_loop_ends(tmp_path: Path) -> None:
    """`**` does not descend into linked folders: links to `.` and `..` inside the corpus end the
    listing instead of making it endless (glob.glob(recursive=True) follows them). Hidden names
    stay out unless the pattern names them, as with glob."""
    import subprocess
    import sys

    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    (corpus / "sub" / "a.txt").write_text("a\n")
    (corpus / ".hidden.txt").write_text("h\n")
    (corpus / "sub" / "self").symlink_to(".")
    (corpus / "sub" / "up").symlink_to("..")
    script = (
        "import sys; from tokenmill.sources.base import expand_paths, glob_paths\n"
        "print(sorted(p.name for p in expand_paths([sys.argv[1] + '/**/*.txt'])))\n"
        "print([p.rsplit('/', 1)[1] for p in glob_paths(sys.argv[1] + '/.*.txt')])\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(corpus)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["['a.txt']", "['.hidden.txt']"]
    docs, _ = read(str(corpus / "**" / "*.txt"))
    assert [d.text for d in docs] == ["a\n"]
