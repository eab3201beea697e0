"""lmnb/server imports the runtime and the web stack only: never the language layer, IPython
or the widgets (an AST walk over its imports, functions and TYPE_CHECKING blocks included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SERVER = Path(__file__).resolve().parents[2] / "lmnb" / "server"
FORBIDDEN_TOP = {"IPython", "ipywidgets", "traitlets", "anywidget"}


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        match node:
            case ast.Import(names=names):
                found += [a.name for a in names]
            case ast.ImportFrom(module=module, names=names, level=0):
                found += [f"{module}.{a.name}" if module == "lmnb" else module for a in names]
            case ast.ImportFrom(level=level) if level > 0:
                found.append("<relative>")
    return found


@pytest.mark.parametrize("path", sorted(SERVER.glob("*.py")), ids=lambda p: p.name)
def test_server_imports_only_the_runtime(path: Path) -> None:
    for module in imports(path):
        top = module.split(".")[0]
        assert top not in FORBIDDEN_TOP, f"{path.name} imports {module}"
        if top == "lmnb":
            assert module.startswith(("lmnb.runtime", "lmnb.server")), \
                f"{path.name} imports {module} (the language layer)"
        assert module != "<relative>", f"{path.name}: use absolute imports"
