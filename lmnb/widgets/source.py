"""Where a view's data comes from: an `Engine` behind a `Runtime`, an `Engine`, or the default.

Views accept any of these; this module turns one into the engine whose `snapshot()`/`stats()`
they read. Knows nothing of widgets.
"""

from __future__ import annotations

from typing import Any


def engine_of(runtime_or_engine: Any = None) -> Any:
    if runtime_or_engine is None:
        from lmnb.lang.backend import get_default_backend

        runtime_or_engine = get_default_backend()
    engine = getattr(runtime_or_engine, "engine", runtime_or_engine)
    if not (hasattr(engine, "snapshot") and hasattr(engine, "stats")):
        raise TypeError(f"expected an lmnb Runtime or Engine, got {type(runtime_or_engine)!r}")
    return engine
