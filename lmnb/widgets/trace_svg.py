"""The fork/join trace as data and as a picture: lanes, spans and edges from trace events.

Pure Python over the interpreter's `TraceEvent` dicts (`kind`, `stream_id`, `time`, `name`,
`data`), tagged with the run they belong to (a `--batch` cell has several). `trace_model`
pairs each stream's `start`/`end` events into spans (gen and select with their variable and
token counts; fork and join as markers; a span an `error` event ends is failed or cancelled)
and turns `fork`/`join` events into edges; `trace_svg` draws one lane per stream on a shared
time axis, and `calls_html` a table of the model calls with their tokens as shares (cached |
computed prompt | generated), summed into "this program's calls". Knows nothing of widgets or
states.
"""

from __future__ import annotations

from html import escape
from typing import Any

LABEL_W = 96
PLOT_W = 720
LANE_H = 40
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
    """A span per start/end pair of each stream (a stream runs its ops one at a time); an
    `error` event ends the stream's open span as failed (or cancelled)."""
    out, open_ = [], {}
    for e in events:
        lane = lanes.index((run, e["stream_id"]))
        if e["kind"] == "start":
            open_[lane] = {"lane": lane, "op": e["data"]["op"], "name": e["name"],
                           "t0": e["time"] + shift, "t1": now, "running": True,
                           "status": "running"}
        elif e["kind"] == "end" and lane in open_:
            span = open_.pop(lane)
            counts = {k: e["data"].get(k, 0) for k in
                      ("prompt_tokens", "cached_tokens", "completion_tokens")}
            out.append({**span, **counts, "t1": e["time"] + shift, "running": False,
                        "status": "done", "call": "prompt_tokens" in e["data"]})
        elif e["kind"] == "error" and lane in open_:
            span = open_.pop(lane)
            status = "cancelled" if "cancel" in e["data"].get("message", "").lower() \
                else "failed"
            out.append({**span, "t1": e["time"] + shift, "running": False, "status": status,
                        "error": e["data"].get("message", "")})
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
    """One lane per stream; spans as boxes named by their op and variable (the label above the
    box, cut where the lane's next span begins), fork edges solid and join edges dashed, and a
    time axis. Token counts are in each box's tooltip and in `calls_html` (shares, not time)."""
    t_max = max(model["t_max"], 1e-3)
    x = lambda t: LABEL_W + PLOT_W * t / t_max  # noqa: E731 - a local scale
    y = lambda lane: AXIS_H + lane * LANE_H  # noqa: E731
    height = AXIS_H + LANE_H * max(len(model["lanes"]), 1) + 4
    ends = _label_room(model["spans"], x)
    width = max([LABEL_W + PLOT_W + 10] + [x(s["t0"]) + CHAR_W * len(_span_label(s)) + 8
                                          for s in model["spans"] if ends.get(id(s)) is None
                                          and s["op"] not in ("fork", "join")])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
             f'height="{height}" class="lmnb-trace-svg" font-size="11">']
    parts += _axis(t_max, x, height)
    for i, label in enumerate(model["lanes"]):
        parts.append(f'<text class="lmnb-lane-label" x="4" y="{y(i) + 26}" fill="#444" '
                     f'font-family="sans-serif">{escape(label)}</text>'
                     f'<line x1="{LABEL_W}" y1="{y(i) + 22}" x2="{width - 4:.0f}" '
                     f'y2="{y(i) + 22}" stroke="#ddd" class="lmnb-lane-line"/>')
    for edge in model["edges"]:
        dash = ' stroke-dasharray="4 3"' if edge["kind"] == "join" else ""
        parts.append(f'<line class="lmnb-edge-{edge["kind"]}" x1="{x(edge["t0"]):.1f}" '
                     f'y1="{y(edge["from_lane"]) + 22}" x2="{x(edge["t1"]):.1f}" '
                     f'y2="{y(edge["to_lane"]) + 22}" stroke="#8e44ad"{dash}/>')
    parts += [_span_svg(s, x, y, ends.get(id(s))) for s in model["spans"]]
    parts.append("</svg>")
    return "".join(parts)


def _label_room(spans: list[dict[str, Any]], x: Any) -> dict[int, float]:
    """Where each span's label must end: the next labelled span's start in its lane (the
    last span of a lane is absent: its label may run on, and the picture widens for it)."""
    by_lane: dict[int, list[dict[str, Any]]] = {}
    for s in spans:
        if s["op"] not in ("fork", "join"):
            by_lane.setdefault(s["lane"], []).append(s)
    room = {}
    for lane_spans in by_lane.values():
        lane_spans.sort(key=lambda s: s["t0"])
        for a, b in zip(lane_spans, lane_spans[1:], strict=False):
            room[id(a)] = x(b["t0"]) - 4
    return room


def _axis(t_max: float, x: Any, height: int) -> list[str]:
    step = next(s for s in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 1e9)
                if t_max / s <= 8)
    out, t = [], 0.0
    while t <= t_max + 1e-9:
        out.append(f'<line x1="{x(t):.1f}" y1="{AXIS_H - 6}" x2="{x(t):.1f}" y2="{height}" '
                   f'stroke="#eee" class="lmnb-grid"/><text x="{x(t) + 2:.1f}" '
                   f'y="{AXIS_H - 8}" fill="#888" font-family="sans-serif">{t:g}s</text>')
        t += step
    return out


STATUS_FILL = {"running": "#fdf2d0", "done": "#f4f6f7", "failed": "#f5b7b1",
               "cancelled": "#fad7a0"}


def _span_svg(span: dict[str, Any], x: Any, y: Any, label_end: float | None) -> str:
    x0, x1, top = x(span["t0"]), x(span["t1"]), y(span["lane"]) + 14
    width = max(x1 - x0, 3.0)
    if span["op"] in ("fork", "join"):  # a join waits for the children: a thin bar
        what = "join (waiting for the forks)" if span["op"] == "join" else "fork (prefix commit)"
        return (f'<g class="lmnb-span-{span["op"]}"><title>{what}</title><rect x="{x0:.1f}" '
                f'y="{top + 6}" width="{width:.1f}" height="4" fill="#d2b4de"/></g>')
    label = _span_label(span)
    room = (label_end - x0) if label_end is not None else 1e9
    shown = _fit(label, room)
    status = span["status"]
    stroke = {"failed": "#c0392b", "cancelled": "#b9770e"}.get(status, "#666")
    return (f'<g class="lmnb-span-{span["op"]} lmnb-span-{status}"><title>{escape(label)}: '
            f'{escape(_counts_text(span))}</title><rect x="{x0:.1f}" y="{top}" '
            f'width="{width:.1f}" height="16" rx="3" fill="{STATUS_FILL[status]}" '
            f'stroke="{stroke}"/><text x="{x0 + 1:.1f}" y="{top - 3}" fill="#222" '
            f'class="lmnb-span-label">{escape(shown)}</text></g>')


def _fit(label: str, room: float) -> str:
    """The label cut (with …) to `room` pixels; at least its first character."""
    fits = int(room // CHAR_W)
    if fits >= len(label):
        return label
    return label[: max(fits - 1, 1)] + "…"


def _span_label(span: dict[str, Any]) -> str:
    """What a gen/select box says: its op and variable, and how it ended if not well."""
    status = {"running": " …", "failed": " ✗ failed", "cancelled": " ✗ cancelled"}
    return f'{span["op"]} {span["name"] or ""}'.strip() + status.get(span["status"], "")


def _counts_text(span: dict[str, Any]) -> str:
    if span["status"] != "done":
        return span["status"]
    computed = span["prompt_tokens"] - span["cached_tokens"]
    return (f'prompt {span["prompt_tokens"]} tokens ({span["cached_tokens"]} cached, '
            f'{computed} computed), {span["completion_tokens"]} generated')


def calls(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The spans that were model calls (gen, select, a fork's prefix commit), ended."""
    return [s for s in model["spans"] if s["status"] == "done" and s.get("call")]


MAX_ROWS = 24


def calls_html(model: dict[str, Any]) -> str:
    """A row per model call: its prompt tokens' shares (cached | computed) and its generated
    tokens as a bar of fixed width, then the sum: this program's calls."""
    rows = calls(model)
    total = {k: sum(s[k] for s in rows) for k in
             ("prompt_tokens", "cached_tokens", "completion_tokens")}
    scale = max([s["prompt_tokens"] + s["completion_tokens"] for s in rows] + [1])
    body = "".join(_call_row(model["lanes"][s["lane"]], s, scale) for s in rows[:MAX_ROWS])
    more = (f'<tr><td colspan="5" class="lmnb-dim">… {len(rows) - MAX_ROWS} more calls'
            "</td></tr>" if len(rows) > MAX_ROWS else "")
    rate = total["cached_tokens"] / total["prompt_tokens"] if total["prompt_tokens"] else 0.0
    foot = (f'<tr class="lmnb-total"><td colspan="2"><b>this program\'s calls</b> '
            f'({len(rows)})</td><td class="lmnb-num">{total["cached_tokens"]} / '
            f'{total["prompt_tokens"]} ({rate:.0%})</td><td class="lmnb-num">'
            f'{total["completion_tokens"]}</td><td></td></tr>')
    return ('<table class="lmnb-calls" style="border-collapse:collapse;margin-top:4px">'
            '<tr class="lmnb-dim"><th>stream</th><th>call</th><th title="prompt tokens found '
            'in the radix cache / all prompt tokens of the call">cached / prompt</th>'
            '<th>generated</th><th title="each call\'s tokens as shares: cached prompt, '
            f'computed prompt, generated (length: tokens)">tokens</th></tr>{body}{more}{foot}'
            "</table>")


def _call_row(lane: str, span: dict[str, Any], scale: int) -> str:
    cached, prompt = span["cached_tokens"], span["prompt_tokens"]
    parts = [(cached, CACHED, "cached"), (prompt - cached, COMPUTED, "computed"),
             (span["completion_tokens"], GENERATED, "generated")]
    bar = "".join(f'<span title="{n} {what}" style="display:inline-block;height:9px;'
                  f'width:{160 * n / scale:.1f}px;background:{c}"></span>'
                  for n, c, what in parts if n)
    return (f'<tr><td>{escape(lane)}</td><td>{escape(_span_label(span))}</td>'
            f'<td class="lmnb-num">{cached} / {prompt}</td>'
            f'<td class="lmnb-num">{span["completion_tokens"]}</td>'
            f'<td style="white-space:nowrap">{bar}</td></tr>')


def legend_html() -> str:
    items = [(CACHED, "cached prompt tokens"), (COMPUTED, "computed prompt tokens"),
             (GENERATED, "generated tokens"), ("#8e44ad", "fork (solid) / join (dashed)")]
    return "<div class=\"lmnb-legend\" style=\"margin:2px 0\">" + "".join(
        f'<span style="border-bottom:4px solid {c};margin-right:8px">{escape(t)}</span>'
        for c, t in items) + "</div>"
