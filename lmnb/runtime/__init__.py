"""lmnb.runtime: the engine (model forward, KV pool, radix cache, scheduler, sampler, grammar).

Never imports the language layer, IPython, ipywidgets or traitlets. The public names load
lazily (PEP 562): `import lmnb.runtime.handle` or `lmnb.runtime.params` (stdlib only) loads no
torch; `from lmnb.runtime import Engine` loads the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that defines it
_NAMES = {
    "Engine": "lmnb.runtime.engine",
    "GenerateHandle": "lmnb.runtime.handle",
    "GenerateResult": "lmnb.runtime.handle",
    "ModelNotFoundError": "lmnb.runtime.loader",
    "SamplingParams": "lmnb.runtime.params",
    "StreamChunk": "lmnb.runtime.handle",
}

if TYPE_CHECKING:
    from lmnb.runtime.engine import Engine
    from lmnb.runtime.handle import GenerateHandle, GenerateResult, StreamChunk
    from lmnb.runtime.loader import ModelNotFoundError
    from lmnb.runtime.params import SamplingParams


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'lmnb.runtime' has no attribute {name!r}")
    value = getattr(importlib.import_module(_NAMES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))


__all__ = [
    "Engine",
    "GenerateHandle",
    "GenerateResult",
    "ModelNotFoundError",
    "SamplingParams",
    "StreamChunk",
]
