"""SGLang's module paths under `sys.modules["sglang"] = lmnb`: an import hook that answers
`sglang.<sub>` with lmnb's own module `lmnb.<sub>` (`sglang.lang.ir` → `lmnb.lang.ir`,
`sglang.global_config` → `lmnb.lang.global_config`).

Why a hook: with only `sglang` aliased, Python imports `sglang.lang` by searching the alias's
`__path__` (lmnb's folder) and runs `lmnb/lang/__init__.py` a second time as a new module named
`sglang.lang`, then binds that copy as attribute `lang` of the aliased package, so `lmnb.lang`
itself becomes the copy (and `lmnb.lang.backend` an AttributeError). The hook returns the module
lmnb already has instead, so nothing is loaded twice and `lmnb.lang` stays itself.

`install()` (called by `import lmnb`) puts the hook first on `sys.meta_path`; it answers only
while `sys.modules["sglang"]` is the lmnb package, so a real SGLang installation is untouched.
A name with no lmnb module (`sglang.srt...`) is not found, as usual. To undo an alias, remove
`sglang` and every `sglang.*` key from `sys.modules`. Knows nothing of the language itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

# SGLang module paths whose lmnb module sits elsewhere (every other `sglang.X` is `lmnb.X`).
RENAMED = {"sglang.global_config": "lmnb.lang.global_config"}


def target_name(fullname: str) -> str:
    """The lmnb module that SGLang's module `fullname` (`sglang.<sub>`) is."""
    return RENAMED.get(fullname, "lmnb" + fullname[len("sglang"):])


class _Loader(importlib.abc.Loader):
    """Hands the import system lmnb's existing module (importing it first if needed)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias's spec on the module; its own goes back.
        module.__spec__ = self.spec


class SGLangAliasFinder(importlib.abc.MetaPathFinder):
    """Finds `sglang.<sub>` as `lmnb.<sub>` while `sys.modules["sglang"]` is lmnb."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("sglang.") or not _aliased():
            return None
        name = target_name(fullname)
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            return None
        if found is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(name))


def _aliased() -> bool:
    lmnb = sys.modules.get("lmnb")
    return lmnb is not None and sys.modules.get("sglang") is lmnb


_FINDER = SGLangAliasFinder()


def install() -> None:
    """Put the hook first on `sys.meta_path` (once)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
