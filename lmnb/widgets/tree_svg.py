"""The radix tree as a picture: pick the busiest paths, lay them out, draw plain SVG.

Pure Python over `Engine.snapshot()` data (nodes with `id`, `parent`, `num_tokens`, `text`,
`lock`, `last_access`, `num_hits`; a node with `"evicted": True` is a ghost of one just evicted)
and `marks` (node id -> its recent events, hit, split or insert, with their ages in seconds,
newest first);
the live widget and the static repr draw the same SVG. Knows nothing of widgets or the engine.
"""

from __future__ import annotations

import heapq
from html import escape
from typing import Any

COL_W = 170
ROW_H = 26
LABEL_CHARS = 18


def subtree_tokens(nodes: list[dict[str, Any]]) -> dict[int, int]:
    children = children_of(nodes)
    total: dict[int, int] = {}

    def visit(nid: int, own: int) -> int:
        total[nid] = own + sum(visit(c["id"], c["num_tokens"]) for c in children.get(nid, []))
        return total[nid]

    for root in children.get(None, []):
        visit(root["id"], root["num_tokens"])
    return total


def children_of(nodes: list[dict[str, Any]]) -> dict[int | None, list[dict[str, Any]]]:
    out: dict[int | None, list[dict[str, Any]]] = {}
    for n in nodes:
        out.setdefault(n["parent"], []).append(n)
    return out


def busiest(nodes: list[dict[str, Any]], max_nodes: int,
            must: set[int] | None = None) -> set[int]:
    """Ids of about `max_nodes` nodes: first `must` and their ancestors (what is flashing right
    now), then grown from there along the heaviest children (tokens below a node, weighted by
    its hits), so what is kept is always a connected tree."""
    children = children_of(nodes)
    parent = {n["id"]: n["parent"] for n in nodes}
    weight = subtree_tokens(nodes)
    kept: set[int] = set()
    for nid in must or ():
        while nid is not None and nid in parent and nid not in kept:
            kept.add(nid)
            nid = parent[nid]
    heap = [(0, 0, n["id"]) for n in children.get(None, []) if n["id"] not in kept]
    heap += [(-weight[c["id"]] * (1 + c["num_hits"]), c["id"], c["id"])
             for nid in kept for c in children.get(nid, []) if c["id"] not in kept]
    heapq.heapify(heap)
    while heap and len(kept) < max_nodes:
        _, _, nid = heapq.heappop(heap)
        kept.add(nid)
        for c in children.get(nid, []):
            score = weight[c["id"]] * (1 + c["num_hits"])
            heapq.heappush(heap, (-score, c["id"], c["id"]))
    return kept


def layout(nodes: list[dict[str, Any]], kept: set[int]) -> dict[int, tuple[int, int]]:
    """(column, row) per kept node: depth across, leaves in order down, parents centred."""
    children = children_of([n for n in nodes if n["id"] in kept])
    pos: dict[int, tuple[int, int]] = {}
    next_row = [0]

    def place(n: dict[str, Any], depth: int) -> float:
        kids = children.get(n["id"], [])
        if not kids:
            row = next_row[0]
            next_row[0] += 1
        else:
            rows = [place(c, depth + 1) for c in kids]
            row = (rows[0] + rows[-1]) / 2
        pos[n["id"]] = (depth, row)
        return row

    for root in children.get(None, []):
        place(root, 0)
    return pos


def recency(nodes: list[dict[str, Any]]) -> dict[int, float]:
    """0 (least recently used) .. 1 (most recent), by rank of `last_access`."""
    order = sorted(nodes, key=lambda n: n["last_access"])
    span = max(len(order) - 1, 1)
    return {n["id"]: i / span for i, n in enumerate(order)}


def colour(r: float) -> str:
    lo, hi = (220, 224, 230), (243, 156, 18)  # grey (old) -> orange (recent)
    return "#" + "".join(f"{round(a + (b - a) * r):02x}" for a, b in zip(lo, hi))


def short(text: str) -> str:
    flat = text.replace("\n", "⏎")
    return flat if len(flat) <= LABEL_CHARS else flat[: LABEL_CHARS - 1] + "…"


MARK_STYLE = {  # event -> (stroke colour, legend)
    "hit": ("#2471a3", "hit"),
    "split": ("#b7950b", "split"),
    "insert": ("#1e8449", "inserted"),
    "evict": ("#7f8c8d", "evicted"),
}
FLASH_SECONDS = 1.5


def tree_svg(nodes: list[dict[str, Any]], max_nodes: int = 60,
             marks: dict[int, list[tuple[str, float]]] | None = None) -> tuple[str, int]:
    """(SVG markup, number of hidden nodes) for a snapshot's nodes (ghosts included)."""
    marks = marks or {}
    kept = busiest(nodes, max_nodes, set(marks))
    pos = layout(nodes, kept)
    rec = recency(nodes)
    hidden_below = {nid: 0 for nid in kept}
    for n in nodes:
        if n["id"] not in kept and n["parent"] in kept:
            hidden_below[n["parent"]] += 1 + _count_below(nodes, n["id"])
    num_hidden = sum(1 for n in nodes if n["id"] not in kept and not n.get("evicted"))
    rows = max((r for _, r in pos.values()), default=0) + 1
    cols = max((c for c, _ in pos.values()), default=0) + 1
    width, height = cols * COL_W + 40, rows * ROW_H + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'class="lmnb-tree">']
    by_id = {n["id"]: n for n in nodes}
    for nid, (c, r) in pos.items():  # edges first, under the boxes
        parent = by_id[nid]["parent"]
        if parent in pos:
            pc, pr = pos[parent]
            parts.append(f'<line x1="{pc * COL_W + _w(by_id[parent])}" y1="{pr * ROW_H + 20}" '
                         f'x2="{c * COL_W + 4}" y2="{r * ROW_H + 20}" stroke="#999"/>')
    for nid, (c, r) in pos.items():
        parts.append(_node_svg(by_id[nid], c * COL_W + 4, r * ROW_H + 10, rec[nid],
                               hidden_below[nid], marks.get(nid)))
    if num_hidden:
        parts.append(f'<text x="4" y="{height - 6}" fill="#666">{num_hidden} nodes hidden '
                     f'(showing the {len(kept)} busiest and active)</text>')
    parts.append("</svg>")
    return "".join(parts), num_hidden


def _w(n: dict[str, Any]) -> int:
    """Box width grows with the node's tokens (root: a small stub)."""
    return 24 if n["parent"] is None else 40 + min(n["num_tokens"], 200) * 110 // 200


def _count_below(nodes: list[dict[str, Any]], nid: int) -> int:
    kids = [n["id"] for n in nodes if n["parent"] == nid]
    return len(kids) + sum(_count_below(nodes, k) for k in kids)


def _stroke(n: dict[str, Any], marks: list[tuple[str, float]] | None) -> tuple[str, str]:
    """(extra classes, stroke attributes): fresh events flash, fading over FLASH_SECONDS; the
    newest one picks the colour, a split dashes the outline."""
    if n.get("evicted"):
        return " lmnb-node-evicted", ' stroke="#7f8c8d" stroke-dasharray="4 3" opacity="0.45"'
    if marks:
        kind, age = marks[0]
        fade = max(0.0, 1.0 - age / FLASH_SECONDS)
        width = 2 + 3 * fade
        kinds = [k for k, _ in marks]
        dash = ' stroke-dasharray="5 2"' if "split" in kinds else ""
        classes = "".join(f" lmnb-flash-{k}" for k in kinds)
        return (f" lmnb-flash{classes}",
                f' stroke="{MARK_STYLE[kind][0]}" stroke-width="{width:.1f}"{dash}')
    if n["lock"]:
        return " lmnb-node-locked", ' stroke="#c0392b" stroke-width="2.5"'
    return "", ' stroke="#777"'


def _node_svg(n: dict[str, Any], x: int, y: int, r: float, hidden: int,
              mark: list[tuple[str, float]] | None = None) -> str:
    is_root = n["parent"] is None
    label = "root" if is_root else short(n.get("text", ""))
    cls, stroke = _stroke(n, mark)
    locked = " lmnb-node-locked" if n["lock"] and "locked" not in cls else ""
    event = "".join(f" · {kind} {age:.1f}s ago" for kind, age in mark or [])
    state = "evicted" if n.get("evicted") else f"lock {n['lock']}"
    title = (f"{n['num_tokens']} tokens · {n['num_hits']} hits · {state}{event}\n"
             f"{n.get('text', '')}")
    more = (f'<text x="{x + _w(n) + 3}" y="{y + 14}" fill="#888">+{hidden}</text>'
            if hidden else "")
    fill = "#ffffff" if n.get("evicted") else colour(r)
    deco = ' text-decoration="line-through"' if n.get("evicted") else ""
    return (f'<g class="lmnb-node{cls}{locked}" data-node-id="{n["id"]}">'
            f'<title>{escape(title)}</title>'
            f'<rect x="{x}" y="{y}" width="{_w(n)}" height="20" rx="4" '
            f'fill="{fill}"{stroke}/>'
            f'<text x="{x + 3}" y="{y + 14}" font-size="11"{deco}>{escape(label)}</text>'
            f'{more}</g>')


def legend_html() -> str:
    """The tree's key, as inline-styled HTML (shows without the package's CSS too)."""
    items = [("#c0392b", "locked (in use)")] + [(c, name) for c, name in MARK_STYLE.values()]
    swatches = "".join(
        f'<span style="border:2px solid {c};border-radius:3px;padding:0 4px;margin-right:6px">'
        f"{escape(name)}</span>" for c, name in items)
    return (f'<div style="margin:2px 0">{swatches}<span style="color:#888">fill: grey old → '
            "orange recently used</span></div>")
