"""The layering rules, checked on the source: imports, module docstrings, ARCHITECTURE.md.

`lmnb/runtime` never imports the language layer (any `lmnb` module outside `lmnb.runtime`),
IPython, ipywidgets, traitlets or anywidget, not even inside a function or under
TYPE_CHECKING; `lmnb/server` may import only the runtime and itself; `lmnb/lang` never imports
the notebook layer (magics, widgets, IPython...) nor the server. Every module under `lmnb/`
opens with a docstring, and ARCHITECTURE.md names every module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lmnb"
RUNTIME = PACKAGE / "runtime"
LANG = PACKAGE / "lang"
SERVER = PACKAGE / "server"
FORBIDDEN_TOP = {"IPython", "ipywidgets", "traitlets", "anywidget"}
ESCAPED = "<beyond lmnb>"


def modules(under: Path) -> list[Path]:
    return sorted(p for p in under.rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def dotted_package(path: Path) -> list[str]:
    """The package a module's relative imports start from: lmnb/runtime/x.py -> lmnb.runtime."""
    return list(path.relative_to(ROOT).with_suffix("").parts[:-1])


# the lmnb packages each layer may import (besides third-party ones outside FORBIDDEN_TOP)
ALLOWED = {
    "runtime": ("lmnb.runtime",),
    "server": ("lmnb.runtime", "lmnb.server"),
    "lang": ("lmnb.lang", "lmnb.runtime", "lmnb.testing", "lmnb"),
}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def layer_violation(layer: str, module: str) -> str | None:
    """Why importing `module` (absolute, dotted) from `layer` breaks the layering."""
    if module.startswith(ESCAPED):
        return "a relative import escapes the lmnb package"
    top = module.split(".")[0]
    if top in FORBIDDEN_TOP:
        return f"imports {module} (notebook/widget layer)"
    if top != "lmnb":
        return None
    if layer == "lang":  # `lmnb` itself only for its public names, never the notebook layer
        bad = any(_within(module, p) for p in ("lmnb.magics", "lmnb.widgets", "lmnb.server"))
        return f"imports {module} (the notebook layer or the server)" if bad else None
    if not any(_within(module, p) for p in ALLOWED[layer]):
        allowed = " and ".join(ALLOWED[layer])
        return f"imports {module} (outside its layer; only {allowed} allowed)"
    return None


def import_violations(path: Path, source: str | None = None) -> list[str]:
    """'file:line: reason' for every import in `path` that leaves its layer (the folder under
    lmnb/ it sits in: runtime, server or lang)."""
    layer = path.relative_to(PACKAGE).parts[0]
    source = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(source, filename=str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        for module in imported_modules(path, node):
            why = layer_violation(layer, module)
            if why:
                found.append(f"{rel(path)}:{node.lineno}: {why}")
    return found


def imported_modules(path: Path, node: ast.AST) -> list[str]:
    """The absolute modules an import statement (or import_module("...") call) brings in."""
    match node:
        case ast.Import(names=names):
            return [a.name for a in names]
        case ast.ImportFrom(module=module, names=names, level=level):
            base = resolve_from(path, module, level)
            if base == "lmnb":  # `from lmnb import runtime` is fine, `from lmnb import gen` not
                return [f"lmnb.{a.name}" if a.name != "*" else "lmnb" for a in names]
            return [base]
        case ast.Call(func=func, args=[ast.Constant(value=str(name)), *_]) if _is_dynamic(func):
            return [name]
    return []


def _is_dynamic(func: ast.expr) -> bool:
    match func:
        case ast.Name(id="__import__" | "import_module"):
            return True
        case ast.Attribute(value=ast.Name(id="importlib"), attr="import_module"):
            return True
    return False


def resolve_from(path: Path, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    package = dotted_package(path)
    if level - 1 >= len(package):
        return ESCAPED
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


# ---- the runtime's imports ------------------------------------------------------------------


def test_runtime_has_modules() -> None:
    assert len(modules(RUNTIME)) > 5, f"no runtime modules found under {RUNTIME}"


@pytest.mark.parametrize("path", modules(RUNTIME), ids=rel)
def test_runtime_never_imports_the_language_or_notebook_layers(path: Path) -> None:
    found = import_violations(path)
    assert not found, "runtime imports outside its layer:\n" + "\n".join(found)


@pytest.mark.parametrize("path", modules(LANG) + modules(SERVER), ids=rel)
def test_language_and_server_keep_to_their_layers(path: Path) -> None:
    found = import_violations(path)
    assert not found, "imports outside the layer:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("where", "source", "bad"),
    [
        ("lang/x.py", "from lmnb.lang.ir import Gen\nfrom lmnb.runtime.params import P", False),
        ("lang/backend/x.py", "from ..chat import ChatTemplate\nimport httpx", False),
        ("lang/x.py", "from lmnb.widgets import Dashboard", True),
        ("lang/x.py", "def f():\n    import lmnb.magics", True),
        ("lang/x.py", "import IPython", True),
        ("lang/x.py", "from lmnb.server.app import create_app", True),
        ("server/x.py", "from lmnb.runtime import Engine\nimport fastapi", False),
        ("server/x.py", "from lmnb.lang.chat import ChatTemplate", True),
        ("server/x.py", "import lmnb", True),
        ("runtime/x.py", "import torch\nfrom lmnb.runtime.kv_pool import KVPool", False),
        ("runtime/x.py", "from lmnb import runtime\nimport lmnb.runtime.engine", False),
        ("runtime/x.py", "from . import kv_pool\nfrom .grammar.state import GrammarState", False),
        ("runtime/grammar/x.py", "from ..radix_cache import Node", False),
        ("runtime/x.py", "def f():\n    import lmnb.lang.state", True),
        ("runtime/x.py", "from lmnb import gen", True),
        ("runtime/x.py", "import lmnb", True),
        ("runtime/x.py", "from lmnb.widgets.tree import TreeView", True),
        ("runtime/x.py", "from .. import state", True),
        ("runtime/x.py", "from ..interpreter import run", True),
        ("runtime/grammar/x.py", "from ...ir import Gen", True),
        ("runtime/x.py", "from .... import anything", True),
        ("runtime/x.py", "import IPython.display", True),
        ("runtime/x.py", "from ipywidgets import DOMWidget", True),
        ("runtime/x.py", "from traitlets import Unicode", True),
        ("runtime/x.py", "import anywidget", True),
        ("runtime/x.py", "import importlib\nimportlib.import_module('lmnb.lang.api')", True),
        ("runtime/x.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from lmnb.lang.state import ProgramState", True),
    ],
)
def test_the_import_check_itself(where: str, source: str, bad: bool) -> None:
    found = import_violations(PACKAGE / where, source)
    assert bool(found) == bad, found


# ---- docstrings -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", modules(PACKAGE), ids=rel)
def test_every_module_opens_with_a_docstring(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    doc = ast.get_docstring(tree)
    assert doc and doc.strip(), (
        f"{rel(path)}:1: the module does not open with a docstring "
        "(what it owns and what it does not know)"
    )


# ---- ARCHITECTURE.md ------------------------------------------------------------------------

_TOKEN = re.compile(r"[\w./-]*[\w/]")
_DIR_IN_HEADING = re.compile(r"(?<![\w./])(lmnb/[\w/]*)")


def named_paths(text: str) -> set[Path]:
    """Files and folders under the repository that the document names.

    Spellings that count: a path from the repository (`lmnb/runtime/x.py`, `lmnb/runtime/`), a
    dotted name (`lmnb.runtime.x`), or a path relative to the folder that the nearest heading
    naming one names: under "## Runtime (`lmnb/runtime/`)", `x.py` and `grammar/state.py` are
    runtime modules (with no such heading, paths are relative to `lmnb/`).
    """
    named: set[Path] = set()
    headings: list[tuple[int, list[Path]]] = []  # (level, folders the heading names)
    for line in text.splitlines():
        heading = re.match(r"(#+)\s", line)
        if heading:
            level = len(heading.group(1))
            headings = [h for h in headings if h[0] < level]
            headings.append((level, [ROOT / d for d in _DIR_IN_HEADING.findall(line)]))
        bases = next((dirs for _, dirs in reversed(headings) if dirs), [PACKAGE])
        for token in _TOKEN.findall(line):
            if token.startswith("lmnb/"):
                named.add((ROOT / token).resolve())
            elif token.endswith((".py", "/")):
                named.update((base / token).resolve() for base in bases)
            elif re.fullmatch(r"lmnb(\.\w+)*", token):
                dotted = ROOT / token.replace(".", "/")
                named.update({dotted.with_suffix(".py"), dotted})
    return named


def test_architecture_names_every_module() -> None:
    doc = ROOT / "ARCHITECTURE.md"
    if not doc.exists():
        pytest.skip("ARCHITECTURE.md does not exist yet")
    named = named_paths(doc.read_text(encoding="utf-8"))
    missing = []
    for path in modules(PACKAGE):
        # a package's __init__.py also counts as named when its folder is
        folder_named = path.name == "__init__.py" and path.parent in named
        if path not in named and not folder_named:
            missing.append(f"{rel(path)}: not named in ARCHITECTURE.md")
    assert not missing, "\n".join(missing)


def test_the_naming_check_itself() -> None:
    text = (
        "## Runtime (`lmnb/runtime/`)\n| `kv_pool.py` | x |\n| `grammar/state.py` | x |\n"
        "### Notes\nsee `lmnb.runtime.engine` and `lmnb/widgets/`\n"
        "## Language (`lmnb/`)\n| `state.py` | x |\n"
    )
    named = named_paths(text)
    for path in ("runtime/kv_pool.py", "runtime/grammar/state.py", "state.py",
                 "runtime/engine.py", "widgets"):
        assert PACKAGE / path in named, path
    for path in ("runtime/state.py", "kv_pool.py", "grammar/state.py"):
        assert PACKAGE / path not in named, path
