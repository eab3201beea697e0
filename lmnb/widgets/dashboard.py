"""`Dashboard`: what `%%lmprogram` shows by default: the program's text, the radix tree and
the cache statistics, in one box.

An ipywidgets `VBox` of the three views; its static repr is their static reprs in order.
"""

from __future__ import annotations

from typing import Any

import ipywidgets

from lmnb.widgets.base import with_static_html
from lmnb.widgets.source import engine_of
from lmnb.widgets.stats import CacheStatsView
from lmnb.widgets.text import TextView
from lmnb.widgets.tree import RadixTreeView


class Dashboard(ipywidgets.VBox):
    def __init__(self, runtime_or_engine: Any = None, *, state: Any = None, live: bool = True,
                 **kwargs: Any) -> None:
        engine = engine_of(runtime_or_engine)
        self.text = TextView(state, live=live) if state is not None else None
        # with a program, the views freeze once it is done and the engine is idle
        done = (lambda: self.text.done and engine.idle()) if state is not None else None
        self.tree = RadixTreeView(engine, live=live, done=done)
        self.stats = CacheStatsView(engine, live=live, done=done)
        views = [v for v in (self.text, self.tree, self.stats) if v is not None]
        super().__init__(children=views, **kwargs)

    @property
    def views(self) -> list[Any]:
        return list(self.children)

    def refresh(self) -> None:
        for view in self.views:
            view.refresh()

    def _repr_html_(self) -> str:
        return "".join(view._repr_html_() for view in self.views)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_static_html(self, super()._repr_mimebundle_(**kwargs))
