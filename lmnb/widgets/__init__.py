"""Live views: `RadixTreeView`, `CacheStatsView`, `TraceView`, `TokenStreamView`, `TextView`,
`Dashboard`.

Names load lazily (anywidget and ipywidgets import only when a view is made), so `%load_ext
lmnb` stays light. Every view takes its data from the runtime's `snapshot()`/`stats()`/
`events()` or a program state's trace events and token ledger, and renders statically too
(`_repr_html_`), for nbconvert and GitHub.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "RadixTreeView": "lmnb.widgets.tree",
    "CacheStatsView": "lmnb.widgets.stats",
    "TextView": "lmnb.widgets.text",
    "TokenStreamView": "lmnb.widgets.token_stream",
    "TraceView": "lmnb.widgets.trace",
    "Dashboard": "lmnb.widgets.dashboard",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'lmnb.widgets' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
