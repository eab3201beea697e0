"""`RadixTreeView`: the runtime's radix tree, live (anywidget) and static (SVG repr).

Reads `snapshot()` only. Traits: `num_nodes` and `num_tokens` (the whole tree, root
excluded), `num_locked`, `num_hidden` (nodes collapsed away), `nodes` (the snapshot's nodes,
text truncated) and `html` (the SVG from `tree_svg`). Refreshed by a `Poller` (≤ 5 Hz).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import traitlets

from lmnb.widgets.base import HtmlView
from lmnb.widgets.poller import Poller
from lmnb.widgets.source import engine_of
from lmnb.widgets.tree_svg import short, tree_svg


class RadixTreeView(HtmlView):
    num_nodes = traitlets.Int(0).tag(sync=True)
    num_tokens = traitlets.Int(0).tag(sync=True)
    num_locked = traitlets.Int(0).tag(sync=True)
    num_hidden = traitlets.Int(0).tag(sync=True)
    nodes = traitlets.List([]).tag(sync=True)

    def __init__(self, runtime_or_engine: Any = None, *, max_nodes: int = 60,
                 live: bool = True, done: Callable[[], bool] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine_of(runtime_or_engine)
        self.max_nodes = max_nodes
        self.refresh()
        self.poller = Poller(self, done=done) if live else None

    def refresh(self) -> None:
        key = _tree_key(self.engine.stats())
        if key == getattr(self, "_key", None):
            return  # nothing moved: skip the snapshot (it decodes every node's text)
        self._key = key
        snap = self.engine.snapshot()
        real = [n for n in snap["nodes"] if n["parent"] is not None]
        svg, hidden = tree_svg(snap["nodes"], self.max_nodes)
        with self.hold_trait_notifications():
            self.num_nodes = len(real)
            self.num_tokens = sum(n["num_tokens"] for n in real)
            self.num_locked = sum(1 for n in real if n["lock"])
            self.num_hidden = hidden
            self.nodes = [{**{k: n[k] for k in ("id", "parent", "num_tokens", "lock",
                                                 "num_hits")}, "label": short(n["text"])}
                          for n in snap["nodes"]]
            self.html = (f"<div><b>radix tree</b>: {self.num_nodes} nodes, "
                         f"{self.num_tokens} tokens, {self.num_locked} locked</div>{svg}")


def _tree_key(st: dict[str, Any]) -> tuple[Any, ...]:
    """Counters that change whenever the tree can have changed (steps, pool, locks, flushes)."""
    return (st["forward_steps"], st["num_requests"], st["free_slots"], st["evictable_slots"],
            st["protected_slots"], st["evicted_tokens"])
