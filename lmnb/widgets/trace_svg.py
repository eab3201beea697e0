"""The fork/join trace as data and as a picture: lanes, spans and edges from trace events.

Pure Python over the interpreter's `TraceEvent` dicts (`kind`, `stream_id`, `time`, `name`,
`data`), tagged with the run they belong to (a `--batch` cell has several). `trace_model`
pairs each stream's `start`/`end` events into spans (gen and select with their variable and
token counts; fork and join as markers) and turns `fork`/`join` events into edges; `trace_svg`
draws one lane per stream on a shared time axis. Knows nothing of widgets or states.
"""

from __future__ import annotations

from html import escape
from typing import Any

LABEL_W = 96
PLOT_W = 720
LANE_H = 34
AXIS_H = 22
CHAR_W = 6.7  # the width of one character of the 11px monospace labels
CACHED, COMPUTED, GENERATED = "#58d68d", "#f5b041", "#5dade2"


def trace_model(runs: list[tuple[float, list[dict[str, Any]]]], now: float) -> dict[str, Any]:
    """`runs`: (start time, events) per program run. Lanes in order of appearance; times in
    seconds from the earliest run's start; a span still running ends at `now`."""
    t0 = min((start for start, _ in runs), default=now)
    lanes: list[tuple[int, int]] = []  # (run, stream id)
    spans: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for run, (start, events) in enumerate(runs):
        shift = start - t0
        for e in events:
            _lane(lanes, (run, e["stream_id"]))
            for child in e["data"].get("children", ()):
                _lane(lanes, (run, child))
        spans += _spans(lanes, run, events, shift, now - t0)
        edges += _edges(lanes, run, events, shift)
    labels = [_label(run, sid, len(runs)) for run, sid in lanes]
    t_max = max([now - t0, *(s["t1"] for s in spans)], default=0.0)
    return {"lanes": labels, "spans": spans, "edges": edges, "t_max": t_max}


def _lane(lanes: list[tuple[int, int]], key: tuple[int, int]) -> int:
    if key not in lanes:
        lanes.append(key)
    return lanes.index(key)


def _label(run: int, stream_id: int, num_runs: int) -> str:
    name = "s" if stream_id == 0 else f"fork {stream_id}"
    return f"#{run} {name}" if num_runs > 1 else name


def _spans(lanes: list[tuple[int, int]], run: int, events: list[dict[str, Any]],
           shift: float, now: float) -> list[dict[str, Any]]:
    """A span per start/end pair of each stream (a stream runs its ops one at a time)."""
    out, open_ = [], {}
    for e in events:
        lane = lanes.index((run, e["stream_id"]))
        if e["kind"] == "start":
            open_[lane] = {"lane": lane, "op": e["data"]["op"], "name": e["name"],
                           "t0": e["time"] + shift, "t1": now, "running": True}
        elif e["kind"] == "end" and lane in open_:
            span = open_.pop(lane)
            counts = {k: e["data"].get(k, 0) for k in
                      ("prompt_tokens", "cached_tokens", "completion_tokens")}
            out.append({**span, **counts, "t1": e["time"] + shift, "running": False})
    return out + list(open_.values())


def _edges(lanes: list[tuple[int, int]], run: int, events: list[dict[str, Any]],
           shift: float) -> list[dict[str, Any]]:
    """Fork: parent at the fork -> each child's first event; join: each child's last event
    (before the join) -> the parent at the join."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for e in events:
        first.setdefault(e["stream_id"], e["time"])
        last[e["stream_id"]] = e["time"]
    out = []
    for e in events:
        if e["kind"] not in ("fork", "join"):
            continue
        parent, t = lanes.index((run, e["stream_id"])), e["time"]
        for child in e["data"]["children"]:
            lane = lanes.index((run, child))
            if e["kind"] == "fork":
                out.append({"kind": "fork", "from_lane": parent, "to_lane": lane,
                            "t0": t + shift, "t1": max(first.get(child, t), t) + shift})
            else:
                out.append({"kind": "join", "from_lane": lane, "to_lane": parent,
                            "t0": min(last.get(child, t), t) + shift, "t1": t + shift})
    return out


def trace_svg(model: dict[str, Any]) -> str:
    """One lane per stream; spans as boxes (a cached/computed/generated token bar under each
    gen/select), fork edges solid and join edges dashed, and a time axis."""
    t_max = max(model["t_max"], 1e-3)
    x = lambda t: LABEL_W + PLOT_W * t / t_max  # noqa: E731 - a local scale
    y = lambda lane: AXIS_H + lane * LANE_H  # noqa: E731
    height = AXIS_H + LANE_H * max(len(model["lanes"]), 1) + 4
    # a span's label runs past its box: widen the picture so the last ones are not cut off
    width = max([LABEL_W + PLOT_W + 10] + [
        x(s["t0"]) + 3 + CHAR_W * len(" ".join(_span_label(s))) + 4
        for s in model["spans"] if s["op"] not in ("fork", "join")])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
             f'height="{height}" class="lmnb-trace-svg" font-size="11">']
    parts += _axis(t_max, x, height)
    for i, label in enumerate(model["lanes"]):
        parts.append(f'<text x="4" y="{y(i) + 20}" fill="#333">{escape(label)}</text>'
                     f'<line x1="{LABEL_W}" y1="{y(i) + 16}" x2="{LABEL_W + PLOT_W}" '
                     f'y2="{y(i) + 16}" stroke="#eee"/>')
    for edge in model["edges"]:
        dash = ' stroke-dasharray="4 3"' if edge["kind"] == "join" else ""
        parts.append(f'<line class="lmnb-edge-{edge["kind"]}" x1="{x(edge["t0"]):.1f}" '
                     f'y1="{y(edge["from_lane"]) + 16}" x2="{x(edge["t1"]):.1f}" '
                     f'y2="{y(edge["to_lane"]) + 16}" stroke="#8e44ad"{dash}/>')
    parts += [_span_svg(s, x, y) for s in model["spans"]]
    parts.append("</svg>")
    return "".join(parts)


def _axis(t_max: float, x: Any, height: int) -> list[str]:
    step = next(s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 1e9)
                if t_max / s <= 8)
    out, t = [], 0.0
    while t <= t_max + 1e-9:
        out.append(f'<line x1="{x(t):.1f}" y1="{AXIS_H - 6}" x2="{x(t):.1f}" y2="{height}" '
                   f'stroke="#f2f2f2"/><text x="{x(t) + 2:.1f}" y="{AXIS_H - 8}" '
                   f'fill="#888">{t:g}s</text>')
        t += step
    return out


def _span_svg(span: dict[str, Any], x: Any, y: Any) -> str:
    x0, x1, top = x(span["t0"]), x(span["t1"]), y(span["lane"]) + 6
    width = max(x1 - x0, 3.0)
    if span["op"] in ("fork", "join"):  # a join waits for the children: a thin bar
        what = "join (waiting for the forks)" if span["op"] == "join" else "fork (prefix commit)"
        return (f'<g class="lmnb-span-{span["op"]}"><title>{what}</title><rect x="{x0:.1f}" '
                f'y="{top + 8}" width="{width:.1f}" height="4" fill="#d2b4de"/></g>')
    label, counts = _span_label(span)
    fill = "#fef9e7" if span["running"] else "#fdfefe"
    return (f'<g class="lmnb-span-{span["op"]}"><title>{escape(label)}: {escape(counts)}'
            f'</title><rect x="{x0:.1f}" y="{top}" width="{width:.1f}" height="18" rx="3" '
            f'fill="{fill}" stroke="#555"/>{_token_bar(span, x0, top + 19, width)}'
            f'<text x="{x0 + 3:.1f}" y="{top + 13}">{escape(label)}'
            f'<tspan fill="#777"> {escape(counts)}</tspan></text></g>')


def _span_label(span: dict[str, Any]) -> tuple[str, str]:
    """What a gen/select box says: its op and variable, and its token counts."""
    return f'{span["op"]} {span["name"] or ""}'.strip(), _counts_text(span)


def _counts_text(span: dict[str, Any]) -> str:
    if span["running"]:
        return "running"
    computed = span["prompt_tokens"] - span["cached_tokens"]
    return f'{span["cached_tokens"]} cached, {computed} computed, {span["completion_tokens"]} gen'


def _token_bar(span: dict[str, Any], x0: float, top: float, width: float) -> str:
    """A thin bar under the span: cached | computed prompt tokens | generated tokens."""
    parts = [span.get("cached_tokens", 0), span.get("prompt_tokens", 0)
             - span.get("cached_tokens", 0), span.get("completion_tokens", 0)]
    total = sum(parts)
    if span["running"] or total <= 0:
        return ""
    out, at = [], x0
    for n, colour in zip(parts, (CACHED, COMPUTED, GENERATED), strict=True):
        w = width * n / total
        out.append(f'<rect x="{at:.1f}" y="{top:.1f}" width="{w:.1f}" height="4" '
                   f'fill="{colour}"/>')
        at += w
    return "".join(out)


def legend_html() -> str:
    items = [(CACHED, "cached prompt tokens"), (COMPUTED, "computed prompt tokens"),
             (GENERATED, "generated tokens"), ("#8e44ad", "fork (solid) / join (dashed)")]
    return "<div style=\"margin:2px 0\">" + "".join(
        f'<span style="border-bottom:4px solid {c};margin-right:8px">{escape(t)}</span>'
        for c, t in items) + "</div>"
