"""`CacheStatsView`: the runtime's figures since it started: hit rate (cumulative and recent,
and a chart of both over the refreshes it has seen), cached vs computed prompt tokens, pool
usage (free / evictable / in use), extend and decode steps, tokens/s (with the model runner
and weight format where the engine's `describe()` reports them).

Reads `stats()`, and `describe()` once when made; the recent hit rate is over the last
`window` refreshes (~5 s at 5 Hz). Shows the runtime as it was when made; `live=True`
follows it (≤ 5 Hz) until closed or `done()`; a `Dashboard` refreshes it itself.
Live as an anywidget, static as an HTML table (`_repr_html_`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from html import escape
from typing import Any

import traitlets

from lmnb.widgets.base import HtmlView
from lmnb.widgets.poller import Poller
from lmnb.widgets.source import engine_of


class CacheStatsView(HtmlView):
    hit_rate = traitlets.Float(0.0)
    recent_hit_rate = traitlets.Float(0.0)
    prompt_tokens = traitlets.Int(0)
    cached_tokens = traitlets.Int(0)
    computed_prompt_tokens = traitlets.Int(0)
    capacity = traitlets.Int(0)
    free_slots = traitlets.Int(0)
    evictable_slots = traitlets.Int(0)
    in_use_slots = traitlets.Int(0)
    extend_steps = traitlets.Int(0)
    decode_steps = traitlets.Int(0)
    tokens_per_second = traitlets.Float(0.0)
    runs_on = traitlets.Unicode("")  # runner and weights, where described
    history = traitlets.List([])  # cumulative hit rate per refresh
    recent_history = traitlets.List([])  # the recent hit rate per refresh

    def __init__(self, runtime_or_engine: Any = None, *, window: int = 25, live: bool = False,
                 done: Callable[[], bool] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.engine = engine_of(runtime_or_engine)
        self._recent: deque[tuple[int, int]] = deque(maxlen=window)
        self._measured = False  # whether a prompt came while this view refreshed
        self.runs_on = runs_on(self.engine)
        self.refresh()
        self.poller = Poller(self, done=done) if live else None

    def refresh(self) -> None:
        st = self.engine.stats()
        self._recent.append((st["prompt_tokens"], st["cached_tokens"]))
        (p0, c0), (p1, c1) = self._recent[0], self._recent[-1]
        with self.hold_trait_notifications():
            self.hit_rate = st["hit_rate"]
            if p1 > p0:  # no prompt in the window: the last recent rate stands
                self.recent_hit_rate = (c1 - c0) / (p1 - p0)
                self._measured = True
            self.prompt_tokens, self.cached_tokens = st["prompt_tokens"], st["cached_tokens"]
            self.computed_prompt_tokens = st["prompt_tokens"] - st["cached_tokens"]
            self.capacity, self.free_slots = st["capacity"], st["free_slots"]
            self.evictable_slots = st["evictable_slots"]
            self.in_use_slots = st["protected_slots"] + st["in_flight_slots"]
            self.extend_steps, self.decode_steps = st["extend_steps"], st["decode_steps"]
            self.tokens_per_second = st["tokens_per_second"]
            self.history = (self.history + [round(st["hit_rate"], 4)])[-HISTORY:]
            self.recent_history = (self.recent_history
                                   + [round(self.recent_hit_rate, 4)])[-HISTORY:]
            self.dom_data = {"hit-rate": round(self.hit_rate, 4),
                             "prompt-tokens": self.prompt_tokens,
                             "cached-tokens": self.cached_tokens}
            self.html = self._markup()

    def _markup(self) -> str:
        cap = max(self.capacity, 1)
        bar = "".join(
            f'<div title="{name}: {n} slots" style="width:{100 * n / cap:.2f}%;background:{c}">'
            "</div>" for name, n, c in (("in use", self.in_use_slots, "#c0392b"),
                                        ("evictable", self.evictable_slots, "#f39c12"),
                                        ("free", self.free_slots, "#d5dbdb")))
        rows = [
            ("hit rate", f"<b>{self.hit_rate:.1%}</b> since start, " + (
                f"{self.recent_hit_rate:.1%} recent (~5 s)" if self._measured else
                "recent: no prompt seen while this view looked"), HIT_TIP),
            ("prompt tokens", f"{self.prompt_tokens}: {self.cached_tokens} cached, "
                              f"{self.computed_prompt_tokens} computed", PROMPT_TIP),
            ("KV pool", f"{self.in_use_slots} in use, {self.evictable_slots} evictable, "
                        f"{self.free_slots} free (of {self.capacity} slots)", POOL_TIP),
            ("steps", f"{self.extend_steps} extend, {self.decode_steps} decode", STEPS_TIP),
            ("speed", f"{self.tokens_per_second:.0f} tokens/s"
                      + (f" ({self.runs_on})" if self.runs_on else ""), SPEED_TIP),
        ]
        table = "".join(f'<tr title="{escape(tip)}"><td class="lmnb-key">{k}</td>'
                        f'<td class="lmnb-num">{v}</td></tr>' for k, v, tip in rows)
        return (f'<div class="lmnb-title"><b>cache</b> <span class="lmnb-dim lmnb-help" '
                f'title="{escape(SCOPE_TIP)}">runtime since start</span></div>'
                f'<table class="lmnb-stats">{table}</table>'
                f'<div class="lmnb-bar" title="KV pool: in use | evictable | free">{bar}</div>'
                f"{chart_svg(self.history, self.recent_history)}")


HISTORY = 150
SCOPE_TIP = ("Every request the runtime served since it started (all programs, all cells). "
             "A program's own figures are its token stream's \"this program's calls\".")
HIT_TIP = "cached prompt tokens / prompt tokens, over every request since the runtime started"
PROMPT_TIP = ("prompt tokens of every request; cached: already in the radix cache when the "
              "request came, computed: run through the model")
POOL_TIP = ("KV slots: in use by running requests or locked, evictable (cached, unlocked), free")
STEPS_TIP = "forward steps: extend (prompt tokens, prefill) and decode (one token a request)"
SPEED_TIP = "tokens per second of the recent forward steps"


RECENT_STYLE = 'stroke="#5dade2" stroke-dasharray="3 2"'
SINCE_STYLE = 'stroke="#1e8449" stroke-width="2"'


def chart_svg(history: list[float], recent: list[float], width: int = 300,
              height: int = 64) -> str:
    """The hit rate over the refreshes this view saw: since start (solid) and recent (dashed),
    0-100 %; nothing for fewer than two points (a view made once has one)."""
    if len(history) < 2:
        return ""

    def line(values: list[float], style: str) -> str:
        step = (width - 36) / max(len(values) - 1, 1)
        pts = " ".join(f"{32 + i * step:.1f},{4 + (height - 16) * (1 - v):.1f}"
                       for i, v in enumerate(values))
        return f'<polyline points="{pts}" fill="none" {style}/>'

    axis = "".join(f'<text x="0" y="{8 + (height - 16) * (1 - v):.0f}" fill="#888" '
                   f'font-size="9" font-family="sans-serif">{v:.0%}</text>'
                   f'<line x1="30" x2="{width - 4}" y1="{4 + (height - 16) * (1 - v):.1f}" '
                   f'y2="{4 + (height - 16) * (1 - v):.1f}" stroke="#ddd" class="lmnb-grid"/>'
                   for v in (0.0, 0.5, 1.0))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'class="lmnb-chart"><title>hit rate while this view followed the runtime: since '
            f"start (solid), recent (dashed)</title>{axis}"
            f"{line(recent, RECENT_STYLE)}{line(history, SINCE_STYLE)}"
            f'<text x="32" y="{height - 1}" fill="#888" font-size="9" font-family="sans-serif">'
            f"hit rate: since start (solid), recent (dashed)</text></svg>")


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
