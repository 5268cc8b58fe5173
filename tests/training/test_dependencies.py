"""The sub-packages of pretrain/ depend one way: no package imports one that imports it back (imports inside
functions count), training/ and objectives/ stay below callbacks/, bench/ and the composition root (launch/), and
runtime/ sits at the bottom."""

import ast
from importlib.util import resolve_name

from tests.conftest import REPO

PRETRAIN = REPO / "pretrain"
ROOT = "voxfm.pretrain"


def node_of(relative: tuple[str, ...]) -> str:
    """pretrain/<sub>/... → <sub>; a file directly in pretrain/ (api.py, errors.py, __init__.py) is its own node."""
    return relative[0].removesuffix(".py")


def imported_modules(tree: ast.AST, package: str) -> list[tuple[str, int]]:
    """(module, line) of every import in the file, relative ones resolved; `from voxfm.pretrain import x` → x too."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module
            found.append((base, node.lineno))
            if base == ROOT:
                found += [(f"{ROOT}.{a.name}", node.lineno) for a in node.names]
    return found


def import_graph() -> dict[str, dict[str, str]]:
    """node → {imported node: where (path:line), the first such import}."""
    graph: dict[str, dict[str, str]] = {}
    for path in sorted(PRETRAIN.rglob("*.py")):
        relative = path.relative_to(PRETRAIN).parts
        source = node_of(relative)
        package = ".".join((ROOT, *relative[:-1]))
        edges = graph.setdefault(source, {})
        for module, line in imported_modules(ast.parse(path.read_text(), str(path)), package):
            if not module.startswith(ROOT + "."):
                continue
            target = module.removeprefix(ROOT + ".").split(".")[0]
            if target != source:
                edges.setdefault(target, f"{path.relative_to(REPO)}:{line}")
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a], or None: depth-first search for an edge back into the current path."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once all its descendants are explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, {})):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_graph_is_read_from_every_file():
    graph = import_graph()
    assert {"launch", "runtime", "training", "callbacks", "objectives", "bench", "cli", "api", "errors"} <= set(graph)
    assert "training" in graph["launch"] and "callbacks" in graph["launch"]  # function-level imports count too
    assert find_cycle({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}}) == ["a", "b", "c", "a"]


def test_no_sub_package_imports_one_that_imports_it_back():
    graph = import_graph()
    cycle = find_cycle(graph)
    where = [f"{a} -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])] if cycle else []
    assert cycle is None, "import cycle in pretrain/:\n  " + "\n  ".join(where)


def test_training_and_objectives_stay_below_callbacks_bench_and_launch():
    graph = import_graph()
    for low in ("training", "objectives"):
        upward = {t: w for t, w in graph[low].items() if t in ("callbacks", "bench", "launch")}
        assert upward == {}, f"{low}/ imports {upward}"
    assert "training" not in graph["objectives"], graph["objectives"]["training"]


def test_runtime_imports_only_errors():
    assert set(import_graph()["runtime"]) <= {"errors"}
