"""DESIGN.md §2 import rules, checked on the source with ``ast`` (nothing is imported).

- schemas imports nothing of ours; infra imports schemas (and infra) only,
  except the CLI, whose commands may import a service lazily, inside a function.
- gateway and handlers import schemas and infra; the gateway may also import
  the catalog (handlers/catalog). Neither imports runner, torch, torchvision,
  timm or segmentation_models_pytorch: the base install has none of them.
  The catalog generator is a developer tool and may read timm/torchvision.
- runner imports schemas, infra and the catalog; nothing imports runner.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("schemas", "infra", "gateway", "handlers", "runner")
HEAVY = ("torch", "torchvision", "timm", "segmentation_models_pytorch")


@dataclass(frozen=True)
class Imp:
    path: str
    module: str
    lazy: bool
    """Inside a function (the CLI's lazy imports), not at module level."""
    line: int


def _imports(path: Path) -> list[Imp]:
    rel = path.relative_to(ROOT).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[Imp] = []

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = lazy or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                found.extend(Imp(rel, a.name, lazy, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append(Imp(rel, child.module, lazy, child.lineno))
            visit(child, inner)

    visit(tree, False)
    return found


ALL = [imp for pkg in OURS for f in sorted((ROOT / pkg).rglob("*.py")) for imp in _imports(f)]


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _violations(pkg: str, allowed: tuple[str, ...], *, skip: tuple[str, ...] = ()
                ) -> list[str]:
    """Imports of our packages from ``pkg`` outside ``allowed`` (module prefixes)."""
    return [f"{i.path}:{i.line} imports {i.module}" for i in ALL
            if i.path.startswith(pkg + "/") and not i.path.startswith(skip)
            and _top(i.module) in OURS
            and not any(i.module == a or i.module.startswith(a + ".") for a in allowed)]


def test_the_parser_sees_imports() -> None:
    assert any(i.path == "runner/model.py" and i.module == "torch" for i in ALL)
    assert any(i.path == "infra/cli/zoo.py" and i.module == "runner.mirror" and i.lazy
               for i in ALL)


def test_schemas_import_nothing_of_ours() -> None:
    assert _violations("schemas", ("schemas",)) == []


def test_infra_imports_schemas_only() -> None:
    assert _violations("infra", ("schemas", "infra"), skip=("infra/cli/",)) == []


def test_cli_imports_services_only_lazily() -> None:
    eager = [f"{i.path}:{i.line} imports {i.module}" for i in ALL
             if i.path.startswith("infra/cli/") and not i.lazy
             and _top(i.module) in ("gateway", "handlers", "runner")]
    assert eager == []


def test_gateway_imports_schemas_infra_and_the_catalog() -> None:
    assert _violations("gateway", ("schemas", "infra", "gateway", "handlers.catalog")) == []


def test_handlers_import_schemas_and_infra() -> None:
    assert _violations("handlers", ("schemas", "infra", "handlers")) == []


def test_the_catalog_is_pure_data() -> None:
    assert _violations("handlers/catalog", ("schemas", "handlers.catalog")) == []


@pytest.mark.parametrize("pkg", ["gateway", "handlers", "schemas", "infra"])
def test_no_torch_outside_the_runner(pkg: str) -> None:
    heavy = [f"{i.path}:{i.line} imports {i.module}" for i in ALL
             if i.path.startswith(pkg + "/") and _top(i.module) in HEAVY]
    assert heavy == []


def test_runner_imports_schemas_infra_and_the_catalog() -> None:
    assert _violations("runner", ("schemas", "infra", "handlers.catalog", "runner")) == []


def test_nothing_imports_the_runner() -> None:
    users = [f"{i.path}:{i.line}" for i in ALL if _top(i.module) == "runner"
             and not i.path.startswith("runner/")
             and not (i.path.startswith("infra/cli/") and i.lazy)]
    assert users == []
