"""The explorer's modules import one another without a cycle, counting imports inside functions."""

import ast
from pathlib import Path

import tokenmill.explorer

PACKAGE = "tokenmill.explorer"


def imports_between_modules() -> dict[str, set[str]]:
    folder = Path(tokenmill.explorer.__file__).parent
    modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name in modules:
        found = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE + "."):
                found.add(node.module.removeprefix(PACKAGE + ".").split(".")[0])
            elif isinstance(node, ast.Import):
                found |= {a.name.removeprefix(PACKAGE + ".").split(".")[0] for a in node.names
                          if a.name.startswith(PACKAGE + ".")}
        graph[name] = found & modules
    return graph


def test_no_import_cycle_among_the_explorers_modules():
    graph = imports_between_modules()
    assert "training" in graph["panels"]  # the graph is read: the dispatcher imports the training panels

    def cycle_from(name: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        if name in path:
            return path[path.index(name):] + (name,)
        for after in sorted(graph[name]):
            found = cycle_from(after, path + (name,))
            if found:
                return found
        return None

    cycles = [c for name in sorted(graph) if (c := cycle_from(name, ()))]
    assert not cycles, " -> ".join(cycles[0])
