"""`CacheStatsView`: hit rate (cumulative and recent), cached vs computed prompt tokens, pool
usage (free / evictable / in use), extend and decode steps, tokens/s (with the model runner
and weight format where the engine's `describe()` reports them).

Reads `stats()`, and `describe()` once when made; the recent hit rate is over the last
`window` refreshes (~5 s at 5 Hz).
Live as an anywidget, static as an HTML table (`_repr_html_`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import traitlets

from lmnb.widgets.base import HtmlView
from lmnb.widgets.poller import Poller
from lmnb.widgets.source import engine_of


class CacheStatsView(HtmlView):
    hit_rate = traitlets.Float(0.0).tag(sync=True)
    recent_hit_rate = traitlets.Float(0.0).tag(sync=True)
    prompt_tokens = traitlets.Int(0).tag(sync=True)
    cached_tokens = traitlets.Int(0).tag(sync=True)
    computed_prompt_tokens = traitlets.Int(0).tag(sync=True)
    capacity = traitlets.Int(0).tag(sync=True)
    free_slots = traitlets.Int(0).tag(sync=True)
    evictable_slots = traitlets.Int(0).tag(sync=True)
    in_use_slots = traitlets.Int(0).tag(sync=True)
    extend_steps = traitlets.Int(0).tag(sync=True)
    decode_steps = traitlets.Int(0).tag(sync=True)
    tokens_per_second = traitlets.Float(0.0).tag(sync=True)
    runs_on = traitlets.Unicode("").tag(sync=True)  # runner and weights, where described
    history = traitlets.List([]).tag(sync=True)  # cumulative hit rate per refresh

    def __init__(self, runtime_or_engine: Any = None, *, window: int = 25, live: bool = True,
                 done: Callable[[], bool] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine_of(runtime_or_engine)
        self._recent: deque[tuple[int, int]] = deque(maxlen=window)
        self.runs_on = runs_on(self.engine)
        self.refresh()
        self.poller = Poller(self, done=done) if live else None

    def refresh(self) -> None:
        st = self.engine.stats()
        self._recent.append((st["prompt_tokens"], st["cached_tokens"]))
        (p0, c0), (p1, c1) = self._recent[0], self._recent[-1]
        with self.hold_trait_notifications():
            self.hit_rate = st["hit_rate"]
            self.recent_hit_rate = (c1 - c0) / (p1 - p0) if p1 > p0 else 0.0
            self.prompt_tokens, self.cached_tokens = st["prompt_tokens"], st["cached_tokens"]
            self.computed_prompt_tokens = st["prompt_tokens"] - st["cached_tokens"]
            self.capacity, self.free_slots = st["capacity"], st["free_slots"]
            self.evictable_slots = st["evictable_slots"]
            self.in_use_slots = st["protected_slots"] + st["in_flight_slots"]
            self.extend_steps, self.decode_steps = st["extend_steps"], st["decode_steps"]
            self.tokens_per_second = st["tokens_per_second"]
            self.history = (self.history + [round(st["hit_rate"], 4)])[-100:]
            self.html = self._markup()

    def _markup(self) -> str:
        cap = max(self.capacity, 1)
        bar = "".join(
            f'<div title="{name}: {n}" style="width:{100 * n / cap:.2f}%;background:{c}"></div>'
            for name, n, c in (("in use", self.in_use_slots, "#c0392b"),
                               ("evictable", self.evictable_slots, "#f39c12"),
                               ("free", self.free_slots, "#dfe6e9")))
        rows = [
            ("hit rate", f"{self.hit_rate:.1%} cumulative, {self.recent_hit_rate:.1%} recent"),
            ("prompt tokens", f"{self.cached_tokens} cached, {self.computed_prompt_tokens} "
                              "computed"),
            ("pool", f"{self.free_slots} free, {self.evictable_slots} evictable, "
                     f"{self.in_use_slots} in use (of {self.capacity})"),
            ("steps", f"{self.extend_steps} extend, {self.decode_steps} decode"),
            ("speed", f"{self.tokens_per_second:.0f} tokens/s"
                      + (f" ({self.runs_on})" if self.runs_on else "")),
        ]
        table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
        return (f'<div><b>cache</b></div><table class="lmnb-stats">{table}</table>'
                f'<div class="lmnb-bar">{bar}</div>')


def runs_on(engine: Any) -> str:
    """"runner X, weights Y" from the engine's describe(), where it reports them (an engine
    without describe(), or without those keys, gives "")."""
    describe = getattr(engine, "describe", None)
    try:
        info = describe() if callable(describe) else {}
    except Exception:  # a view never fails over a description
        return ""
    # the value only: describe() may add its reason in brackets ("native (default: ...)")
    return ", ".join(f"{key} {str(info[key]).split(' (')[0]}" for key in ("runner", "weights")
                     if info.get(key))
