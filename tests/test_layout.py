"""The package's floor plan, read from the code: architecture facts live in the arch table only."""

from __future__ import annotations

import ast
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
