"""The package's shape, read from the source: no import cycle (lazy imports included), no machine
paths or files outside the repository named in code."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "osteo_tf"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the osteo_tf modules it imports anywhere in its source (function bodies too)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                if t.startswith("osteo_tf"):
                    dep = _resolve(t, modules)
                    if dep and dep != name and dep != "osteo_tf":
                        deps.add(dep)
        graph[name] = deps
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "osteo_tf.models.registry" in graph and graph["osteo_tf.experiments"], "the graph was read"
    assert _cycles(graph) == []


def test_low_layers_import_nothing_above_them():
    graph = import_graph()
    high = {m for m in graph if m.startswith(("osteo_tf.workflows", "osteo_tf.experiments", "osteo_tf.reports",
                                              "osteo_tf.cli", "osteo_tf.plots"))}
    for low in ("osteo_tf.io", "osteo_tf.datasets", "osteo_tf.splits", "osteo_tf.preprocessing",
                "osteo_tf.augment", "osteo_tf.pipeline", "osteo_tf.evaluation", "osteo_tf.training",
                "osteo_tf.config", "osteo_tf.settings"):
        assert not (graph[low] & high), (low, sorted(graph[low] & high))


MACHINE_PATHS = re.compile(r"/work/|/tmp/|\.\./shared|shared/(design|studies|reliability|synthetic-data|style)\.md"
                           r"|seeds/0\d\d")


def test_code_names_no_machine_path_and_no_file_outside_the_repository():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")):
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if MACHINE_PATHS.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)
