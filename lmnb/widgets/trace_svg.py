"""The fork/join trace as data and as a picture: lanes, spans and edges from trace events.

Pure Python over the interpreter's `TraceEvent` dicts (`kind`, `stream_id`, `time`, `name`,
`data`), tagged with the run they belong to (a `--batch` cell has several). `trace_model`
pairs each stream's `start`/`end` events into spans (gen and select with their variable and
token counts; fork and join with their number of forks; a span an `error` event ends is failed
or cancelled) and turns `fork`/`join` events into edges; `trace_svg` draws one lane per stream
on a shared time axis (labels inside their boxes where they fit, else on rows above them, whole),
and `calls_html` a table of the model calls with their tokens as shares (cached | computed
prompt | generated), summed into "this program's calls". The fills are the light theme's;
`views.css` gives the live view the theme's. Knows nothing of widgets or states.
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
        elif e["kind"] in ("fork", "join") and lane in open_:
            open_[lane]["num_children"] = len(e["data"].get("children", ()))
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
    """One lane per stream; spans as boxes named by their op and variable, fork (the shared
    prefix's commit) and join (waiting for the forks) boxes in purple, fork edges solid and
    join edges dashed, and a time axis. A label sits inside its box where it fits, else above
    it, on the first of a few label rows where nothing else is (the lane grows a row for it);
    the picture widens for the last ones. Token counts are in each box's tooltip and in
    `calls_html` (shares, not time)."""
    t_max = max(model["t_max"], 1e-3)
    x = lambda t: LABEL_W + PLOT_W * t / t_max  # noqa: E731 - a local scale
    places = _place_labels(model["spans"], x)
    rows = [1 + max([p[1] for s, p in places if s["lane"] == lane and p[1] >= 0], default=0)
            for lane in range(max(len(model["lanes"]), 1))]
    tops = [AXIS_H]  # a lane's top; its box sits below its label rows
    for n in rows:
        tops.append(tops[-1] + LANE_H + ROW_H * (n - 1))
    y = lambda lane: tops[lane] + ROW_H * (rows[lane] - 1)  # noqa: E731 - the box row's y
    height = tops[-1] + 4
    width = max([LABEL_W + PLOT_W + 10] + [p[0] + CHAR_W * len(p[2]) + 8 for _, p in places])
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" '
             f'height="{height}" class="lmnb-trace-svg" font-size="11">']
    parts += _axis(t_max, x, height)
    for i, label in enumerate(model["lanes"]):
        parts.append(f'<text class="lmnb-lane-label" x="4" y="{y(i) + 26}" fill="#444" '
                     f'font-family="sans-serif">{escape(label)}</text>'
                     f'<line x1="{LABEL_W}" y1="{y(i) + 22}" x2="{width - 4:.0f}" '
                     f'y2="{y(i) + 22}" stroke="#ddd" class="lmnb-lane-line"/>')
    parts += [_span_svg(s, x, y, place) for s, place in places]
    parts += [_edge_svg(edge, x, y) for edge in model["edges"]]  # over the boxes
    parts.append("</svg>")
    return "".join(parts)


ROW_H = 13  # one row of labels above a lane's boxes
LABEL_ROWS = 3


def _place_labels(spans: list[dict[str, Any]], x: Any
                  ) -> list[tuple[dict[str, Any], tuple[float, int, str]]]:
    """(span, (label x, row, label shown)) for each span, in drawing order: row -1 is inside
    the box (the label fits in it); rows 0.. count upwards from the box. A label goes on the
    lowest row that is free from its x on; when none of `LABEL_ROWS` is, it is cut (with …)
    where the next span of row 0 starts."""
    out = []
    ends: dict[int, list[float]] = {}  # lane -> the x where each label row is free again
    for s in sorted(spans, key=lambda s: (s["lane"], s["t0"])):
        label, x0 = _span_label(s), x(s["t0"])
        need = CHAR_W * len(label) + 6
        if x(s["t1"]) - x0 >= need + 4:
            out.append((s, (x0 + 4, -1, label)))
            continue
        free = ends.setdefault(s["lane"], [0.0] * LABEL_ROWS)
        row = next((r for r, end in enumerate(free) if end <= x0), None)
        shown = label
        if row is None:
            row = 0
            later = [x(o["t0"]) for o in spans if o["lane"] == s["lane"] and o["t0"] > s["t0"]]
            shown = _fit(label, min(later, default=1e9) - x0 - 4)
        free[row] = x0 + CHAR_W * len(shown) + 6
        out.append((s, (x0 + 1, row, shown)))
    return out


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
FORK = "#8e44ad"  # fork and join: boxes, edges, legend


def _edge_svg(edge: dict[str, Any], x: Any, y: Any) -> str:
    """A fork edge from the parent's fork to the child's first op, a dot where it lands; a
    join edge (dashed) from the child's last op to the parent's join."""
    x0, y0 = x(edge["t0"]), y(edge["from_lane"]) + 22
    x1, y1 = x(edge["t1"]), y(edge["to_lane"]) + 22
    dash = ' stroke-dasharray="4 3"' if edge["kind"] == "join" else ""
    return (f'<g class="lmnb-edge-{edge["kind"]}"><line x1="{x0:.1f}" y1="{y0}" '
            f'x2="{x1:.1f}" y2="{y1}" stroke="{FORK}" stroke-width="1.6"{dash}/>'
            f'<circle cx="{x1:.1f}" cy="{y1}" r="2.5" fill="{FORK}"/></g>')


def _span_svg(span: dict[str, Any], x: Any, y: Any, place: tuple[float, int, str]) -> str:
    x0, x1, top = x(span["t0"]), x(span["t1"]), y(span["lane"]) + 14
    width = max(x1 - x0, 3.0)
    label = _span_label(span)
    lx, row, shown = place
    ly = top + 12 if row < 0 else top - 3 - ROW_H * row
    status = span["status"]
    fill, stroke = STATUS_FILL[status], {"failed": "#c0392b", "cancelled": "#b9770e"}.get(
        status, "#666")
    extra = ""
    if span["op"] in ("fork", "join"):
        fill, stroke = ("#e8daef", FORK) if span["op"] == "fork" else ("none", FORK)
        extra = ' stroke-dasharray="4 3"' if span["op"] == "join" else ""
    return (f'<g class="lmnb-span-{span["op"]} lmnb-span-{status}"><title>{escape(label)}: '
            f'{escape(_counts_text(span))}</title><rect x="{x0:.1f}" y="{top}" '
            f'width="{width:.1f}" height="16" rx="3" fill="{fill}" stroke="{stroke}"{extra}/>'
            f'<text x="{lx:.1f}" y="{ly}" fill="#222" class="lmnb-span-label'
            f'{" lmnb-in-box" if row < 0 else ""}">{escape(shown)}</text></g>')


def _fit(label: str, room: float) -> str:
    """The label cut (with …) to `room` pixels; at least its first character."""
    fits = int(room // CHAR_W)
    if fits >= len(label):
        return label
    return label[: max(fits - 1, 1)] + "…"


def _span_label(span: dict[str, Any]) -> str:
    """What a box says: its op and variable (a fork or join: how many forks), and how it
    ended if not well."""
    status = {"running": " …", "failed": " ✗ failed", "cancelled": " ✗ cancelled"}
    name = span["name"] or ""
    if span["op"] in ("fork", "join") and span.get("num_children"):
        name = f'×{span["num_children"]}'
    return f'{span["op"]} {name}'.strip() + status.get(span["status"], "")


def _counts_text(span: dict[str, Any]) -> str:
    if span["status"] != "done":
        return span["status"]
    if span["op"] == "join":
        return "the parent waits here for its forks, then takes their variables"
    if span["op"] == "fork" and not span.get("call"):
        return "the forks start from the parent's text"
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
             (GENERATED, "generated tokens"), (FORK, "fork (solid) / join (dashed)")]
    return "<div class=\"lmnb-legend\" style=\"margin:2px 0\">" + "".join(
        f'<span style="border-bottom:4px solid {c};margin-right:8px">{escape(t)}</span>'
        for c, t in items) + "</div>"
