"""The packages' layering, read from the source (``ast``: nothing is imported, so no import side effects).

Every import counts, at module level or inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autopack"



def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, module: str, *, is_package: bool = False) -> Iterator[str]:
    """Every module name ``source`` imports, anywhere in it; ``from a import b`` gives ``a`` and ``a.b``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                anchor = module.split(".")[: len(module.split(".")) - node.level + int(is_package)]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


@cache
def imports() -> dict[str, frozenset[str]]:
    """``{module: names it imports}`` for every module of ``autopack/``."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        found[name] = frozenset(imported_names(path.read_text(encoding="utf-8"), name,
                                               is_package=path.name == "__init__.py"))
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def offenders(importers: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {module: sorted(n for n in names if any(within(n, f) for f in forbidden))
            for module, names in imports().items()
            if within(module, importers) and any(within(n, f) for n in names for f in forbidden)}


def test_the_collector_sees_lazy_relative_and_from_imports() -> None:
    source = "import os\ndef f():\n    from autopack.db import models\nfrom . import sibling\nfrom ..x import y\n"
    names = set(imported_names(source, "autopack.llm.base"))
    assert {"os", "autopack.db", "autopack.db.models", "autopack.llm.sibling", "autopack.x.y"} <= names
    assert "autopack.llm.base.sibling" in set(imported_names("from . import sibling", "autopack.llm.base",
                                                             is_package=True))


def test_the_llm_layer_imports_no_layer_above_it() -> None:
    """Providers only answer requests: telemetry, the ORM, execution and calibration build on them."""
    assert offenders("autopack.llm", ("autopack.telemetry", "autopack.db", "autopack.execution",
                                      "autopack.calibration")) == {}


@pytest.mark.parametrize("module", ["stats", "distributions", "fit", "model", "step", "backtest", "core", "assemble"])
def test_the_calibration_statistics_do_not_touch_the_database(module: str) -> None:
    assert offenders(f"autopack.calibration.{module}", ("autopack.db",)) == {}


def test_no_module_of_the_library_imports_flows() -> None:
    """``flows/`` wires the library into Prefect and is not installed; the library never reaches back into it
    (``autopack pipeline run`` loads its entry point by path, as a worker does)."""
    assert offenders("autopack", ("flows",)) == {}


def test_flows_is_not_installed_as_a_package() -> None:
    """Only ``autopack`` goes into site-packages: a top-level ``flows`` there would shadow any other one."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert config["tool"]["setuptools"]["packages"]["find"]["include"] == ["autopack*"]


def subpackages() -> list[str]:
    return sorted(f"autopack.{p.parent.name}" for p in PACKAGE.glob("*/__init__.py"))


def package_graph() -> dict[str, set[str]]:
    """Which top-level subpackage imports which other one (any of its modules, any of theirs)."""
    packages = subpackages()
    graph: dict[str, set[str]] = {p: set() for p in packages}
    for module, names in imports().items():
        source = next((p for p in packages if within(module, p)), None)
        if source is None:
            continue
        graph[source] |= {p for p in packages if p != source and any(within(n, p) for n in names)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each node that is on one (depth-first search, the path as found)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_subpackages() -> None:
    graph = package_graph()
    assert {"autopack.llm", "autopack.telemetry", "autopack.calibration"} <= set(graph)
    assert "autopack.llm" in graph["autopack.telemetry"]  # the response type flows llm → telemetry
    assert cycles(graph) == []
