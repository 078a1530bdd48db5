"""The package's floor plan, read from the code: architecture facts live in the arch table only."""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

from mtpgraft.arch import ARCH_RULES

PKG = Path(__file__).resolve().parent.parent / "mtpgraft"
# The table itself, and the test-model builders (which write each family's files by its name).
TABLES = {PKG / "arch.py"}
ARCH_NAME_CONSTANTS = {"ASSISTANT_ARCH", "ASSISTANT_TARGET_ARCH"}


def _arch_literals(node: ast.AST) -> list[str]:
    """Architecture names in a comparison's operand: a string, a name bound to one, or a tuple of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in ARCH_RULES:
        return [node.value]
    if isinstance(node, ast.Name | ast.Attribute):
        name = node.id if isinstance(node, ast.Name) else node.attr
        return [name] if name in ARCH_NAME_CONSTANTS else []
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [x for e in node.elts for x in _arch_literals(e)]
    return []


def arch_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, name) for every comparison or match case on an architecture name in `source`."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            found += [(node.lineno, x) for o in (node.left, *node.comparators) for x in _arch_literals(o)]
        elif isinstance(node, ast.Match):
            found += [(node.lineno, x) for c in node.cases for v in ast.walk(c.pattern)
                      if isinstance(v, ast.MatchValue) for x in _arch_literals(v.value)]
    return sorted(found)


def test_no_module_outside_the_table_compares_an_architecture_name():
    modules = sorted(p for p in PKG.rglob("*.py") if p not in TABLES and "testmodels" not in p.parts)
    found = [f"{p.relative_to(PKG.parent)}:{line} compares with {name!r}"
             for p in modules for line, name in arch_comparisons(p.read_text())]
    assert found == []


def test_the_finder_finds_each_form():
    source = ('if arch == "gemma4": pass\nif a in ("x", ASSISTANT_ARCH): pass\n'
              'if m.arch != "step35": pass\nif m.arch == "llama": pass\nmatch arch:\n    case "mimo2": pass\n')
    assert arch_comparisons(source) == [(1, "gemma4"), (2, "ASSISTANT_ARCH"), (3, "step35"), (5, "mimo2")]



# ----------------------------------------------------------------------------- one-way imports
# The import graph as the code writes it, function-local and TYPE_CHECKING imports included: no
# cycle, no internal import hidden in a function, no import of a layer above (or beside) a module's
# own. The layers are docs/ARCHITECTURE.md's "Layers" list, read from there: the map is the contract.

ARCHITECTURE = PKG.parent / "docs" / "ARCHITECTURE.md"
# Third-party packages that take a tenth of a second or more to import: loaded where they are used,
# so `mtpgraft --help` and the paths that never need them do not pay for them.
HEAVY_PACKAGES = frozenset({"numpy", "gguf", "huggingface_hub", "ray", "matplotlib", "httpx", "httpx2",
                            "requests", "tqdm"})
LAZY_LOADERS = ("cli", "commands")  # a command's module, and its library modules, load when it runs


@dataclass(frozen=True)
class Import:
    source: str  # the importing module inside the package ("hub.plan"; the package's __init__: "")
    target: str  # an internal module, or a third-party package's top name
    line: int
    where: str  # "top", "function" or "TYPE_CHECKING"
    internal: bool


@dataclass(frozen=True)
class Place:
    layer: str
    rank: int  # 0 the bottom layer
    group: tuple[str, ...]  # the entries of its group: a module imports only its group and lower layers


def _module_name(rel: str) -> str:
    parts = rel.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _scopes(node: ast.AST, where: str = "top"):
    """(statement, where it runs) for every statement under `node`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and where == "top" and "TYPE_CHECKING" in ast.unparse(child.test):
            for s in child.body:
                yield s, "TYPE_CHECKING"
                yield from _scopes(s, "TYPE_CHECKING")
            for s in child.orelse:
                yield s, where
                yield from _scopes(s, where)
            continue
        yield child, where
        functions = ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda
        yield from _scopes(child, "function" if isinstance(child, functions) else where)


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, package: str,
             modules: set[str]) -> set[tuple[str, bool]]:
    """(target, internal) for each module an import statement loads: `from X import a` loads X.a
    where that is a module, else X."""
    if isinstance(node, ast.Import):
        pairs = [(a.name, a.name) for a in node.names]
    else:
        stem = node.module or ""
        if node.level:
            base = ([package, *name.split(".")] if name else [package])[: None if is_package else -1]
            stem = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
        pairs = [(f"{stem}.{a.name}", stem) for a in node.names]
    found = set()
    for dotted, fallback in pairs:
        if dotted.split(".")[0] != package:
            found.add((dotted.split(".")[0], False))
            continue
        inner = dotted.removeprefix(package).removeprefix(".")
        found.add((inner if inner in modules else fallback.removeprefix(package).removeprefix("."), True))
    return found


def import_graph(files: dict[str, str], package: str = "mtpgraft") -> list[Import]:
    """Every import in `files` (path inside the package -> source), wherever it is written."""
    modules = {_module_name(rel) for rel in files}
    found: set[Import] = set()
    for rel, source in files.items():
        name, is_package = _module_name(rel), rel.endswith("__init__.py")
        for node, where in _scopes(ast.parse(source)):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found |= {Import(name, t, node.lineno, where, internal)
                          for t, internal in _targets(node, name, is_package, package, modules)}
    return sorted(found, key=lambda i: (i.source, i.line, i.target))


def package_files() -> dict[str, str]:
    return {p.relative_to(PKG).as_posix(): p.read_text() for p in sorted(PKG.rglob("*.py"))}


def heavy_modules(graph: list[Import]) -> set[str]:
    """Internal modules that load a heavy package when imported, at their top or through another."""
    heavy: set[str] = set()
    while True:
        now = heavy | {i.source for i in graph if i.where == "top"
                       and (i.target in heavy if i.internal else i.target in HEAVY_PACKAGES)}
        if now == heavy:
            return heavy
        heavy = now


def hidden_imports(graph: list[Import]) -> list[Import]:
    """Internal imports not at a module's top. Only the CLI loads modules lazily, and a heavy module
    is imported where it is used, like the heavy package it loads."""
    heavy = heavy_modules(graph)
    return [i for i in graph if i.internal and i.where != "top" and i.target not in heavy
            and i.source.split(".")[0] not in LAZY_LOADERS]


def cycles(graph: list[Import]) -> list[list[str]]:
    """The modules of each import cycle (Tarjan's strongly connected sets of two or more)."""
    edges: dict[str, set[str]] = {}
    for i in graph:
        if i.internal and i.target != i.source:
            edges.setdefault(i.source, set()).add(i.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = [stack.pop()]
            while group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(_shown(m) for m in group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def read_layers(doc: str) -> dict[str, Place]:
    """The "## Layers" list (the top layer first) as entry -> place. `|` separates a layer's groups."""
    section = doc.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^- \*\*(.+?)\*\*: (.+)$", section, re.M)
    places: dict[str, Place] = {}
    for i, (layer, text) in enumerate(rows):
        for part in text.split("|"):
            group = tuple(re.findall(r"`([^`]+)`", part))
            for entry in group:
                assert entry not in places, f"{entry} is in two layers"
                places[entry] = Place(layer, len(rows) - 1 - i, group)
    return places


def place_of(module: str, places: dict[str, Place]) -> Place | None:
    """The most specific entry that names `module`: itself, else its package ("hub.plan": "hub")."""
    name = _shown(module)
    while name not in places and "." in name:
        name = name.rsplit(".", 1)[0]
    return places.get(name)


def upward_imports(graph: list[Import], places: dict[str, Place]) -> list[Import]:
    """Internal imports of a higher layer, or of another group of the module's own layer."""
    bad = []
    for i in graph:
        src, dst = place_of(i.source, places), place_of(i.target, places)
        if i.internal and src and dst and (dst.rank, dst.group) != (src.rank, src.group) and dst.rank >= src.rank:
            bad.append(i)
    return bad


def _shown(module: str) -> str:
    return module or "mtpgraft"


def said(imports: list[Import]) -> set[str]:
    """As the pending lists write them: "module -> target (where)", without line numbers."""
    return {f"{_shown(i.source)} -> {_shown(i.target)} ({i.where})" for i in imports}


def _lines(imports: list[Import]) -> list[str]:
    return [f"{_shown(i.source)}:{i.line} imports {_shown(i.target)} ({i.where})" for i in imports]




@functools.cache  # parsed once for the tests below
def _package() -> tuple[list[Import], dict[str, Place]]:
    return import_graph(package_files()), read_layers(ARCHITECTURE.read_text())


def test_every_module_has_one_place_in_the_layers():
    graph, places = _package()
    modules = {_shown(_module_name(rel)) for rel in package_files()}
    assert sorted(m for m in modules if place_of(m, places) is None) == []
    assert sorted(e for e in places if e not in modules) == []  # no entry outlives its module


def test_no_module_imports_a_layer_above_or_beside_its_own():
    graph, places = _package()
    assert _lines(upward_imports(graph, places)) == []


def test_the_import_graph_has_no_cycles():
    graph, _ = _package()
    assert cycles(graph) == []


def test_internal_imports_are_at_the_top():
    graph, _ = _package()
    assert _lines(hidden_imports(graph)) == []


# A package as the checks see it: `app` and `cmd` on top, `a` and `b` (with `sub`) side by side, then
# `base` and `h`, which loads numpy.
SYNTHETIC_LAYERS = "# Doc\n## Layers\n- **top**: `app`, `cmd`\n- **mid**: `a` | `b`\n- **low**: `base`, `h`\n## Next\n"
SYNTHETIC = {
    "__init__.py": "",
    "h.py": "import numpy\n",
    "base.py": "from . import h\nfrom .a import thing\n",  # up: a layer above; a cycle with a
    "a.py": "from . import base\nfrom .b import other\n",  # beside: another group of its layer
    "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sub.deep import X\n",
    "sub/__init__.py": "",
    "sub/deep.py": "def f():\n    from ..b import y\n    from .. import h\n    import numpy\n",
    "app.py": "import pkg.a\nfrom pkg import b\n\ndef run():\n    from .sub import deep\n",
    "cmd/__init__.py": "", "cmd/go.py": "def go():\n    from ..a import z\n",  # the CLI's lazy loading
}


def test_the_checks_find_a_cycle_a_hidden_import_and_an_upward_one():
    graph = import_graph(SYNTHETIC, package="pkg")
    places = read_layers(SYNTHETIC_LAYERS)
    layered = {**places, "sub": places["b"]}
    assert cycles(graph) == [["a", "base"], ["b", "sub.deep"]]
    assert heavy_modules(graph) == {"h", "base", "a", "app"}  # numpy at the top, or through a module that has it
    assert said(hidden_imports(graph)) == {"b -> sub.deep (TYPE_CHECKING)", "sub.deep -> b (function)",
                                           "app -> sub.deep (function)"}  # not cmd.go's, not deep's heavy `h`
    assert said(upward_imports(graph, layered)) == {"base -> a (top)", "a -> b (top)"}
    assert place_of("sub.deep", layered) == places["b"] and place_of("cmd.go", places) == places["cmd"]
    assert place_of("sub.deep", places) is None
    assert place_of("sub.deep", {**layered, "sub.deep": places["h"]}) == places["h"]  # the most specific entry
