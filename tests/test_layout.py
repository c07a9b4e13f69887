"""The house rules of the layout, read from the import statements of every module:

- the libraries (`patent_assets`, `training`) never import `orchestration` or the CLI (`patentflow`);
- `patent_assets` (data) never imports `training` (models);
- the two model families, `training.describe` (PatentLMM) and `training.retrieval` (figure search),
  never import each other; `training.entry` (the command line) is the one module that wires
  them together;
- no import cycle among our modules, counting the imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import PROJECT

FAMILIES = ("training.describe", "training.retrieval")
PACKAGES = ("patent_assets", "training", "orchestration", "patentflow")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _modules(package: str) -> dict[str, set[str]]:
    return {_module_name(path): _imports(path) for path in sorted((PROJECT / package).rglob("*.py"))}


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("library", ["patent_assets", "training"])
def test_the_libraries_never_import_the_orchestration_or_the_cli(library: str) -> None:
    offenders = {
        module: sorted(i for i in imports if _within(i, "orchestration") or _within(i, "patentflow"))
        for module, imports in _modules(library).items()
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_data_library_never_imports_the_models() -> None:
    offenders = {
        m: sorted(i for i in imports if _within(i, "training"))
        for m, imports in _modules("patent_assets").items()
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_model_families_never_import_each_other() -> None:
    modules = _modules("training")
    for family in FAMILIES:
        others = [other for other in FAMILIES if other != family]
        offenders = {
            module: sorted(i for i in imports if any(_within(i, other) for other in others))
            for module, imports in modules.items()
            if _within(module, family)
        }
        assert {m: i for m, i in offenders.items() if i} == {}, family
    # what both share imports neither family, except the one entry point that wires them
    shared = {m: i for m, i in modules.items() if not any(_within(m, f) for f in FAMILIES)}
    for module, imports in shared.items():
        if module not in ("training.entry", "training.__main__"):  # the launchers: nothing imports them
            assert not [i for i in imports if any(_within(i, f) for f in FAMILIES)], module


def test_there_is_no_import_cycle() -> None:
    imports = {module: names for package in PACKAGES for module, names in _modules(package).items()}
    graph = {
        module: {name for name in names if name in imports} - {module} for module, names in imports.items()
    }
    on_path: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        on_path.append(module)
        for dependency in sorted(graph[module]):
            assert dependency not in on_path, " -> ".join([*on_path[on_path.index(dependency) :], dependency])
            if dependency not in done:
                visit(dependency)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
