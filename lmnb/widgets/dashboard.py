"""`Dashboard`: what `%%lmprogram` shows by default: the program's token stream, its fork/join
trace, the radix tree and the cache statistics, in one box.

An ipywidgets `VBox` (the token stream and the trace above, the tree and the statistics side by
side below); its static repr is the views' static reprs in order. With `states` (one program
or a `--batch` cell's), every view freezes once they are done and the engine is idle; without,
it shows only the runtime (tree and statistics).
"""

from __future__ import annotations

from typing import Any

import ipywidgets

from lmnb.widgets.base import with_static_html
from lmnb.widgets.source import engine_of
from lmnb.widgets.stats import CacheStatsView
from lmnb.widgets.token_stream import TokenStreamView
from lmnb.widgets.trace import TraceView
from lmnb.widgets.tree import RadixTreeView


class Dashboard(ipywidgets.VBox):
    def __init__(self, runtime_or_engine: Any = None, *, state: Any = None,
                 states: Any = None, live: bool = True, **kwargs: Any) -> None:
        engine = engine_of(runtime_or_engine)
        states = list(states or []) + ([state] if state is not None else [])
        self.tokens = TokenStreamView(states, live=live) if states else None
        self.trace = TraceView(states, live=live) if states else None
        done = (lambda: self.tokens.done and engine.idle()) if states else None
        self.tree = RadixTreeView(engine, live=live, done=done)
        self.stats = CacheStatsView(engine, live=live, done=done)
        top = [v for v in (self.tokens, self.trace) if v is not None]
        below = ipywidgets.HBox([self.tree, self.stats], layout=ipywidgets.Layout(
            flex_flow="row wrap", align_items="flex-start"))
        super().__init__(children=[*top, below], **kwargs)

    @property
    def views(self) -> list[Any]:
        return [v for v in (self.tokens, self.trace, self.tree, self.stats) if v is not None]

    def refresh(self) -> None:
        for view in self.views:
            view.refresh()

    def _repr_html_(self) -> str:
        return "".join(view._repr_html_() for view in self.views)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_static_html(self, super()._repr_mimebundle_(**kwargs))
