"""`Dashboard`: what `%%lmprogram` shows by default (the program's token stream, its fork/join
trace, the radix tree and the cache statistics, with a stop button), and what `%lmnb monitor`
shows (the runtime's tree and statistics, followed live).

An ipywidgets `VBox`; its static repr is the views' static reprs in order. One `Poller`
refreshes every view together (≤ 5 Hz), so the tree and the statistics are always read at the
same moment. With `states` (one program or a `--batch` cell's) the dashboard belongs to its
cell: once every program has ended (done, failed or cancelled) it refreshes one last time and
freezes, showing the runtime as it was when they finished, whatever later cells do. Without
states it is a monitor: it follows the runtime until closed or its button stops it.
`live=False` draws once, now.
"""

from __future__ import annotations

from typing import Any

import ipywidgets

from lmnb.widgets.base import with_static_html
from lmnb.widgets.poller import Poller
from lmnb.widgets.source import engine_of
from lmnb.widgets.stats import CacheStatsView
from lmnb.widgets.token_stream import TokenStreamView
from lmnb.widgets.trace import TraceView
from lmnb.widgets.tree import RadixTreeView

STOP_TIP = ("Cancel the program, as Ctrl-C does: its running requests are aborted and their KV "
            "slots freed; the runtime keeps serving. (A cell run with --wait keeps the kernel "
            "busy: interrupt the kernel instead.)")


class Dashboard(ipywidgets.VBox):
    def __init__(self, runtime_or_engine: Any = None, *, state: Any = None,
                 states: Any = None, live: bool = True, **kwargs: Any) -> None:
        engine = engine_of(runtime_or_engine)
        self.states = list(states or []) + ([state] if state is not None else [])
        self.tokens = TokenStreamView(self.states, live=False) if self.states else None
        self.trace = TraceView(self.states, live=False) if self.states else None
        self.tree = RadixTreeView(engine, live=False)
        self.stats = CacheStatsView(engine, live=False)
        self.frozen = not live  # True once the picture no longer changes
        self.button = ipywidgets.Button(
            description="stop" if self.states else "stop following",
            icon="stop" if self.states else "pause", button_style="danger" if self.states else "",
            tooltip=STOP_TIP if self.states else "freeze the monitor at the runtime's state now",
            layout=ipywidgets.Layout(width="auto"), disabled=self.frozen)
        self.button.on_click(lambda _: self.stop())
        top = [v for v in (self.tokens, self.trace) if v is not None]
        self.tree.add_class("lmnb-tree-view")
        self.stats.add_class("lmnb-stats-view")
        below = ipywidgets.HBox([self.tree, self.stats], layout=ipywidgets.Layout(
            flex_flow="row wrap", align_items="flex-start"))
        below.add_class("lmnb-below")  # side by side where they fit (views.css)
        head = ipywidgets.HBox([self.button]) if live else None
        super().__init__(children=[v for v in (head, *top, below) if v is not None],
                         **kwargs)
        self.add_class("lmnb-dashboard")
        # the views drew themselves when made; a live dashboard's first poll refreshes them
        self.poller = Poller(self, done=lambda: self.frozen, linger=0.0) if live else None

    @property
    def views(self) -> list[Any]:
        return [v for v in (self.tokens, self.trace, self.tree, self.stats) if v is not None]

    def refresh(self) -> None:
        """Every view, read together; a program's dashboard freezes after the refresh that
        saw its programs ended (checked first, so that refresh follows their end)."""
        if self.frozen and getattr(self, "poller", None) is not None:
            return
        ended = bool(self.states) and all(s.progress().done for s in self.states)
        for view in self.views:
            view.refresh()
        if ended:
            self._freeze("done" if self.tokens is None or self.tokens.error == "" else "ended")

    def stop(self) -> int:
        """The button: cancel the programs (returns how many requests were aborted), or stop
        following the runtime (a monitor)."""
        if not self.states:
            self.refresh()
            self._freeze("stopped")
            return 0
        return sum(s.cancel() for s in self.states)

    def _freeze(self, word: str) -> None:
        self.frozen = True
        self.button.disabled = True
        self.button.description = word
        self.button.button_style = ""

    def _repr_html_(self) -> str:
        return "".join(view._repr_html_() for view in self.views)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_static_html(self, super()._repr_mimebundle_(**kwargs))
