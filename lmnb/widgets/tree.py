"""`RadixTreeView`: the runtime's radix tree, as it was when the view was made (the cell's
picture), or followed live with `live=True` until closed or `done()`.

Reads `snapshot()` and the event stream `events(since)` only. Traits: `num_nodes` and
`num_tokens` (the whole tree, root excluded), `num_locked`, `num_hidden` (nodes collapsed
away), `nodes` (the snapshot's nodes, text truncated), `event_counts` (insert, split, hit,
evict seen since the view was made), `recent_events` (the last few, plain data) and `html`
(the SVG from `tree_svg`). Events since the last refresh flash on their nodes: a hit along the
matched path, a split on the new parent, an insert on the new leaf; an evicted node stays a
few seconds as a dashed ghost where it was. A live view is refreshed by a `Poller` (≤ 5 Hz);
a `Dashboard` refreshes its views itself (tree and statistics at the same moment). The live
widget and the static repr draw the same SVG.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import traitlets

from lmnb.widgets.base import HtmlView
from lmnb.widgets.poller import Poller
from lmnb.widgets.source import engine_of
from lmnb.widgets.tree_svg import FLASH_SECONDS, legend_html, short, tree_svg

EVENT_KINDS = ("insert", "split", "hit", "evict")
NUM_RECENT = 12


class RadixTreeView(HtmlView):
    num_nodes = traitlets.Int(0)
    num_tokens = traitlets.Int(0)
    num_locked = traitlets.Int(0)
    num_hidden = traitlets.Int(0)
    num_flashing = traitlets.Int(0)
    nodes = traitlets.List([])
    event_counts = traitlets.Dict({})
    recent_events = traitlets.List([])

    def __init__(self, runtime_or_engine: Any = None, *, max_nodes: int = 60,
                 live: bool = False, done: Callable[[], bool] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine_of(runtime_or_engine)
        self.max_nodes = max_nodes
        self.event_counts = dict.fromkeys(EVENT_KINDS, 0)
        self._seq = self.engine.snapshot()["last_event"]  # flash what happens from now on
        self._marks: dict[int, dict[str, float]] = {}  # node id -> {event: when}
        self._ghosts: dict[int, tuple[dict[str, Any], float]] = {}  # evicted node -> when
        self._known: dict[int, dict[str, Any]] = {}  # the last snapshot's nodes by id
        self.refresh()
        self.poller = Poller(self, done=done, linger=FLASH_SECONDS + 0.5) if live else None

    def refresh(self) -> None:
        now = time.monotonic()
        self._expire(now)
        events = self.engine.events(self._seq)
        key = _tree_key(self.engine.stats())
        if key == getattr(self, "_key", None) and not events and not self._fading():
            return  # nothing moved: skip the snapshot (it decodes every node's text)
        self._key = key
        if events:
            self._seq = events[-1]["seq"]
            self._apply_events(events, now)
        self._draw(self.engine.snapshot(), now)

    # ---- events -> marks and ghosts -------------------------------------------------------

    def _apply_events(self, events: list[dict[str, Any]], now: float) -> None:
        counts = dict(self.event_counts)
        for event in events:
            kind = event["type"]
            if kind in counts:
                counts[kind] += 1
            for nid in _event_nodes(event):
                self._marks.setdefault(nid, {})[kind] = now
            if kind == "evict" and event["node"] in self._known:
                self._ghosts[event["node"]] = (self._known[event["node"]], now)
        self.event_counts = counts
        recent = [_plain(e) for e in events if e["type"] in counts]
        self.recent_events = (list(self.recent_events) + recent)[-NUM_RECENT:]

    def _expire(self, now: float) -> None:
        fresh = {nid: {k: t for k, t in kinds.items() if now - t < FLASH_SECONDS}
                 for nid, kinds in self._marks.items()}
        self._marks = {nid: kinds for nid, kinds in fresh.items() if kinds}
        self._ghosts = {k: v for k, v in self._ghosts.items() if now - v[1] < 2 * FLASH_SECONDS}

    def _fading(self) -> bool:
        return bool(self._marks or self._ghosts or self.num_flashing)

    # ---- drawing --------------------------------------------------------------------------

    def _draw(self, snap: dict[str, Any], now: float) -> None:
        real = [n for n in snap["nodes"] if n["parent"] is not None]
        self._known = {n["id"]: n for n in snap["nodes"]}
        ghosts = self._ghost_nodes(now)
        marks = {nid: sorted(((k, now - t) for k, t in kinds.items() if k != "evict"),
                             key=lambda m: m[1])
                 for nid, kinds in self._marks.items() if nid in self._known}
        marks = {nid: m for nid, m in marks.items() if m}
        svg, hidden = tree_svg(snap["nodes"] + ghosts, self.max_nodes, marks)
        with self.hold_trait_notifications():
            self.num_nodes = len(real)
            self.num_tokens = sum(n["num_tokens"] for n in real)
            self.num_locked = sum(1 for n in real if n["lock"])
            self.num_hidden = hidden
            self.num_flashing = len(marks) + len(ghosts)
            self.nodes = [{**{k: n[k] for k in ("id", "parent", "num_tokens", "lock",
                                                 "num_hits")}, "label": short(n["text"])}
                          for n in snap["nodes"]]
            self.dom_data = {"num-nodes": self.num_nodes, "num-tokens": self.num_tokens,
                             "num-flashing": self.num_flashing}
            self.html = self._markup(svg)

    def _ghost_nodes(self, now: float) -> list[dict[str, Any]]:
        """Evicted nodes, re-parented to the root where their parent went too."""
        ghosts = []
        for nid, (node, _) in self._ghosts.items():
            if nid in self._known:
                continue  # the id came back (not expected; ids are never reused)
            parent = node["parent"] if node["parent"] in self._known else 0
            ghosts.append({**node, "parent": parent, "lock": 0, "evicted": True})
        return ghosts

    def _markup(self, svg: str) -> str:
        counts = ", ".join(f"{self.event_counts[k]} {k}" for k in EVENT_KINDS)
        return (f'<div class="lmnb-title" data-num-nodes="{self.num_nodes}"><b>radix tree</b>: '
                f"{self.num_nodes} nodes, {self.num_tokens} tokens, {self.num_locked} locked "
                f'<span class="lmnb-dim" style="color:#888" title="radix tree events this view '
                f'has seen">(events: {counts})</span></div>'
                f'{legend_html()}<div class="lmnb-scroll" style="overflow:auto;max-height:480px">'
                f"{svg}</div>")


def _event_nodes(event: dict[str, Any]) -> list[int]:
    match event["type"]:
        case "hit":
            return list(event["nodes"])
        case "split" | "insert" | "evict":
            return [event["node"]]
    return []


def _plain(event: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, list | tuple) else v) for k, v in event.items()}


def _tree_key(st: dict[str, Any]) -> tuple[Any, ...]:
    """Counters that change whenever the tree can have changed (steps, pool, locks, flushes)."""
    return (st["forward_steps"], st["num_requests"], st["free_slots"], st["evictable_slots"],
            st["protected_slots"], st["evicted_tokens"])
