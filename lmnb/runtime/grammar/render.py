"""Drawing `explain()` data: Graphviz DOT text, and SVG (via `dot`, or laid out by hand).

Owns how the teaching FSM looks: circles for states, double circles for accepting ones, an
arrow into the start, bold orange edges for compressed (forced) text. Knows only the plain data
`explain()` returns; never imports graphviz's Python package (the `dot` binary is optional).
"""

from __future__ import annotations

import shutil
import subprocess
from collections import deque
from html import escape
from typing import Any

FORCED_COLOR = "#d9480f"


def display(label: str) -> str:
    """An edge label made visible: spaces as ␣, control characters escaped."""
    out = []
    for ch in label:
        if ch == " ":
            out.append("␣")
        elif ch in "\n\t\r":
            out.append({"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def to_dot(data: dict[str, Any]) -> str:
    """The FSM as a Graphviz digraph, left to right."""
    accepting = set(data["accepting"])
    lines = ["digraph fsm {", "  rankdir=LR;", '  node [shape=circle, fontname="Helvetica"];',
             '  edge [fontname="Helvetica"];', "  __start [shape=point, width=0.05];"]
    for state in data["states"]:
        shape = "doublecircle" if state in accepting else "circle"
        lines.append(f'  s{state} [label="{state}", shape={shape}];')
    lines.append(f"  __start -> s{data['start']};")
    for edge in data["edges"]:
        label = _dot_quote(display(edge["label"]))
        style = f', color="{FORCED_COLOR}", fontcolor="{FORCED_COLOR}", penwidth=2' \
            if edge["compressed"] else ""
        lines.append(f'  s{edge["src"]} -> s{edge["dst"]} [label="{label}"{style}];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_svg(data: dict[str, Any], use_dot: bool = True) -> str:
    """SVG of the FSM: Graphviz's layout when the `dot` binary is on PATH, else a plain one."""
    dot = shutil.which("dot") if use_dot else None
    if dot is not None:
        try:
            done = subprocess.run([dot, "-Tsvg"], input=to_dot(data), capture_output=True,
                                  text=True, timeout=20, check=True)
            return done.stdout
        except (OSError, subprocess.SubprocessError):
            pass  # a broken graphviz install: draw it ourselves
    return _plain_svg(data)


def _dot_quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


# ---- the hand-laid fallback: states in columns by breadth-first depth --------------------------

RADIUS = 18
ROW_GAP = 70


def _columns(data: dict[str, Any]) -> dict[int, int]:
    depth, todo = {data["start"]: 0}, deque([data["start"]])
    while todo:
        state = todo.popleft()
        for edge in data["edges"]:
            if edge["src"] == state and edge["dst"] not in depth:
                depth[edge["dst"]] = depth[state] + 1
                todo.append(edge["dst"])
    for state in data["states"]:
        depth.setdefault(state, max(depth.values()) + 1)
    return depth


def _positions(data: dict[str, Any]) -> dict[int, tuple[float, float]]:
    depth = _columns(data)
    width = {}  # column -> gap before it, wide enough for the labels of edges entering it
    for edge in data["edges"]:
        col = depth[edge["dst"]]
        width[col] = max(width.get(col, 0), 7.5 * len(display(edge["label"])) + 40)
    x, xs = 50.0, {}
    for col in range(max(depth.values()) + 1):
        x += max(90.0, width.get(col, 0.0)) if col else 0.0
        xs[col] = x
    rows: dict[int, int] = {}
    pos = {}
    for state in data["states"]:
        row = rows.get(depth[state], 0)
        rows[depth[state]] = row + 1
        pos[state] = (xs[depth[state]], 80.0 + row * ROW_GAP)
    return pos


def _edge_svg(edge: dict[str, Any], pos: dict[int, tuple[float, float]]) -> str:
    (x1, y1), (x2, y2) = pos[edge["src"]], pos[edge["dst"]]
    color = FORCED_COLOR if edge["compressed"] else "#333"
    width = 2.2 if edge["compressed"] else 1.2
    label = escape(display(edge["label"]))
    if edge["src"] == edge["dst"]:  # a loop above the state
        path = (f"M{x1 - 8},{y1 - RADIUS + 2} C{x1 - 30},{y1 - 60} {x1 + 30},{y1 - 60} "
                f"{x1 + 8},{y1 - RADIUS + 2}")
        lx, ly = x1, y1 - 52
    else:
        dx, dy = x2 - x1, y2 - y1
        dist = max((dx * dx + dy * dy) ** 0.5, 1.0)
        ux, uy = dx / dist, dy / dist
        sx, sy, ex, ey = x1 + ux * RADIUS, y1 + uy * RADIUS, x2 - ux * RADIUS, y2 - uy * RADIUS
        cx, cy = (sx + ex) / 2, (sy + ey) / 2
        if x2 <= x1:  # a backward edge arcs below both states
            cy = max(y1, y2) + 40.0 + 0.1 * dist
        path = f"M{sx:.1f},{sy:.1f} Q{cx:.1f},{cy:.1f} {ex:.1f},{ey:.1f}"
        lx, ly = (sx + 2 * cx + ex) / 4, (sy + 2 * cy + ey) / 4 - 6
    weight = ' font-weight="bold"' if edge["compressed"] else ""
    return (f'<path d="{path}" fill="none" stroke="{color}" stroke-width="{width}" '
            f'marker-end="url(#arrow{"F" if edge["compressed"] else ""})"/>\n'
            f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle" fill="{color}"{weight}>'
            f"{label}</text>")


def _state_svg(state: int, xy: tuple[float, float], accepting: bool) -> str:
    x, y = xy
    ring = f'<circle cx="{x}" cy="{y}" r="{RADIUS - 4}" fill="none" stroke="#333"/>' \
        if accepting else ""
    return (f'<circle cx="{x}" cy="{y}" r="{RADIUS}" fill="#fff" stroke="#333"/>{ring}'
            f'<text x="{x}" y="{y + 4}" text-anchor="middle">{state}</text>')


def _plain_svg(data: dict[str, Any]) -> str:
    pos = _positions(data)
    width = max(x for x, _ in pos.values()) + 60
    height = max(y for _, y in pos.values()) + 70
    sx, sy = pos[data["start"]]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="Helvetica, sans-serif" '
        f'font-size="13">',
        "<defs>" + _marker("arrow", "#333") + _marker("arrowF", FORCED_COLOR) + "</defs>",
        f'<path d="M{sx - RADIUS - 28},{sy} L{sx - RADIUS},{sy}" stroke="#333" '
        f'marker-end="url(#arrow)"/>',
    ]
    parts += [_edge_svg(edge, pos) for edge in data["edges"]]
    accepting = set(data["accepting"])
    parts += [_state_svg(s, pos[s], s in accepting) for s in data["states"]]
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _marker(name: str, color: str) -> str:
    return (f'<marker id="{name}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="9" '
            f'markerHeight="9" markerUnits="userSpaceOnUse" orient="auto">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{color}"/></marker>')
