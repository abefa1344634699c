"""DESIGN.md §2 import rules, checked on the source with ``ast`` (nothing is imported).

- schemas imports nothing of ours; imaging imports schemas only; infra imports
  schemas only (infra holds adapters, so it knows no service).
- gateway and handlers import schemas, imaging and infra; the gateway may also
  import the catalog (handlers/catalog), but never the dataset-import pipeline.
  Neither imports runner, torch, torchvision, timm or segmentation_models_pytorch:
  the base install has none of them.
- runner imports schemas, imaging, infra and the catalog; nothing imports runner.
- radtrain/ is the entry layer: it imports a service only lazily (inside a
  function), and nothing of ours imports radtrain/.
- No import cycles between modules (imports under ``if TYPE_CHECKING`` excluded).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("schemas", "imaging", "infra", "gateway", "handlers", "runner", "radtrain")
SERVICES = ("gateway", "handlers", "runner")
HEAVY = ("torch", "torchvision", "timm", "segmentation_models_pytorch")


@dataclass(frozen=True)
class Imp:
    path: str
    module: str
    lazy: bool
    """Inside a function, not at module level."""
    typing_only: bool
    """Under ``if TYPE_CHECKING:``: never executed, so no cycle at run time."""
    line: int


def _is_type_checking(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, root: Path = ROOT) -> list[Imp]:
    rel = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[Imp] = []

    def visit(node: ast.AST, lazy: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            guarded = typing_only or _is_type_checking(child)
            if isinstance(child, ast.Import):
                found.extend(Imp(rel, a.name, lazy, typing_only, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append(Imp(rel, child.module, lazy, typing_only, child.lineno))
                # ``from pkg import module`` imports the submodule too
                found.extend(Imp(rel, f"{child.module}.{a.name}", lazy, typing_only, child.lineno)
                             for a in child.names if _is_module(root, f"{child.module}.{a.name}"))
            visit(child, inner, guarded)

    visit(tree, False, False)
    return found


def _is_module(root: Path, dotted: str) -> bool:
    base = root.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


ALL = [imp for pkg in OURS for f in sorted((ROOT / pkg).rglob("*.py")) for imp in imports_of(f)]


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _violations(pkg: str, allowed: tuple[str, ...]) -> list[str]:
    """Imports of our packages from ``pkg`` outside ``allowed`` (module prefixes)."""
    return [f"{i.path}:{i.line} imports {i.module}" for i in ALL
            if i.path.startswith(pkg + "/") and _top(i.module) in OURS
            and not any(i.module == a or i.module.startswith(a + ".") for a in allowed)]


def test_the_parser_sees_imports() -> None:
    assert any(i.path == "runner/model.py" and i.module == "torch" for i in ALL)
    assert any(i.path.startswith("radtrain/cli/") and _top(i.module) == "runner" and i.lazy
               for i in ALL)


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checks above would see a bad import: a fake tree with one of each."""
    (tmp_path / "imaging").mkdir()
    (tmp_path / "imaging" / "bad.py").write_text(
        "from typing import TYPE_CHECKING\nimport infra.kv\nif TYPE_CHECKING:\n"
        "    import gateway\ndef f():\n    import runner\n")
    found = imports_of(tmp_path / "imaging" / "bad.py", tmp_path)
    assert [(i.module, i.lazy, i.typing_only) for i in found if _top(i.module) in OURS] == [
        ("infra.kv", False, False), ("gateway", False, True), ("runner", True, False)]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_schemas_import_nothing_of_ours() -> None:
    assert _violations("schemas", ("schemas",)) == []


def test_imaging_imports_schemas_only() -> None:
    assert _violations("imaging", ("schemas", "imaging")) == []


def test_infra_imports_schemas_only() -> None:
    assert _violations("infra", ("schemas", "infra")) == []


def test_gateway_imports_schemas_imaging_infra_and_the_catalog() -> None:
    assert _violations("gateway", ("schemas", "imaging", "infra", "gateway",
                                   "handlers.catalog", *DRY_RUN)) == []


DRY_RUN = ("handlers.enrich", "handlers.weights_index")
"""POST /v1/tasks/validate (gateway/validate.py, issue 14) runs the very enrichment of
the handlers, pure and offline, publishing nothing; nothing else of handlers."""


def test_handlers_import_schemas_imaging_and_infra() -> None:
    assert _violations("handlers", ("schemas", "imaging", "infra", "handlers")) == []


def test_the_catalog_is_pure_data() -> None:
    assert _violations("handlers/catalog", ("schemas", "handlers.catalog")) == []


@pytest.mark.parametrize("pkg", ["gateway", "handlers", "schemas", "imaging", "infra"])
def test_no_torch_outside_the_runner(pkg: str) -> None:
    heavy = [f"{i.path}:{i.line} imports {i.module}" for i in ALL
             if i.path.startswith(pkg + "/") and _top(i.module) in HEAVY]
    assert heavy == []


def test_runner_imports_schemas_imaging_infra_and_the_catalog() -> None:
    assert _violations("runner", ("schemas", "imaging", "infra", "handlers.catalog",
                                  "runner")) == []


def test_nothing_imports_the_runner() -> None:
    users = [f"{i.path}:{i.line}" for i in ALL if _top(i.module) == "runner"
             and not i.path.startswith("runner/")
             and not (i.path.startswith("radtrain/") and i.lazy)]
    assert users == []


def test_nothing_imports_the_entry_layer() -> None:
    users = [f"{i.path}:{i.line} imports {i.module}" for i in ALL
             if _top(i.module) == "radtrain" and not i.path.startswith("radtrain/")]
    assert users == []


def test_the_entry_layer_imports_services_only_lazily() -> None:
    eager = [f"{i.path}:{i.line} imports {i.module}" for i in ALL
             if i.path.startswith("radtrain/") and not i.lazy and _top(i.module) in SERVICES]
    assert eager == []


def _module_of(path: str) -> str:
    mod = path[:-3].replace("/", ".")
    return mod.removesuffix(".__init__")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a closed path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_no_import_cycles() -> None:
    modules = {_module_of(i.path) for i in ALL}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for i in ALL:
        if i.lazy or i.typing_only or _top(i.module) not in OURS:
            continue
        src = _module_of(i.path)
        if i.module in modules and i.module != src:
            graph[src].add(i.module)
    assert find_cycle(graph) is None
