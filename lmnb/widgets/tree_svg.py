"""The radix tree as a picture: pick the busiest paths, lay them out, draw plain SVG.

Pure Python over `Engine.snapshot()` data (nodes with `id`, `parent`, `num_tokens`, `text`,
`lock`, `last_access`, `num_hits`; a node with `"evicted": True` is a ghost of one just evicted)
and `marks` (node id -> its recent events, hit, split or insert, with their ages in seconds,
newest first);
the live widget and the static repr draw the same SVG. A node's label shows special tokens as
small badges (`<|im_start|>user` as "user") and starts at the words after them; its fill is the
light theme's recency colour, and `--r` (its recency) lets `views.css` mix the theme's own.
Knows nothing of widgets or the engine.
"""

from __future__ import annotations

import heapq
import re
from html import escape
from typing import Any

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


# Special tokens (`<|im_end|>`, `<s>`) drawn as small badges; a ChatML `<|im_start|>` with its
# role (or a node that starts with the role, split off after `<|im_start|>`) as the role's badge.
SPECIAL = re.compile(r"<\|[^|<>\s]{1,24}\|>|</?s>")
ROLE = re.compile(r"(system|user|assistant|tool)\n")
CHAR_W = 6.7  # one character of the 11px monospace labels
BADGE_CHAR_W = 5.5  # one character of a badge's 9px monospace
LABEL_W = LABEL_CHARS * CHAR_W  # room for a label, badges included


def label_parts(text: str) -> list[tuple[str, str]]:
    """A node's text as ("badge", name) and ("text", words) parts: special tokens as badges
    (`<|im_start|>user` as "user", `<|im_end|>` as "end"), whitespace between them dropped.
    Where there are words, the label starts at the badge just before the first words: the
    reader sees the text, the specials' run before it is in the node's tooltip."""
    parts: list[tuple[str, str]] = []
    at, role_ok = 0, True  # a role may open the text, or follow <|im_start|>
    for m in [*SPECIAL.finditer(text), None]:
        plain = text[at: m.start() if m else len(text)]
        if role_ok and (r := ROLE.match(plain)):
            parts.append(("badge", r.group(1)))
            plain = plain[r.end():]
        if plain.strip():
            parts.append(("text", plain.strip().replace("\n", "⏎")))
        if m is None:
            break
        name = m.group().strip("<|>/").removeprefix("im_")
        role_ok = name == "start"
        if not role_ok or not ROLE.match(text, m.end()):
            parts.append(("badge", name or m.group()))
        at = m.end()
    if not parts and text:  # whitespace only: shown, not blank
        return [("text", text.replace("\n", "⏎").replace(" ", "␣"))]
    first = next((i for i, (kind, _) in enumerate(parts) if kind == "text"), None)
    if first:
        parts = parts[first - 1:] if parts[first - 1][0] == "badge" else parts[first:]
    return parts


def fit_parts(parts: list[tuple[str, str]], room: float = LABEL_W) -> list[tuple[str, str]]:
    """The parts that fit in `room` pixels, the last words cut with …"""
    out = []
    for kind, value in parts:
        w = _part_w(kind, value)
        if w <= room:
            out.append((kind, value))
            room -= w
            continue
        if kind == "text" and room >= 3 * CHAR_W:
            out.append((kind, value[: int(room // CHAR_W) - 1] + "…"))
        elif room >= CHAR_W:
            out.append(("text", "…"))
        break
    return out


def _part_w(kind: str, value: str) -> float:
    return CHAR_W * len(value) if kind == "text" else BADGE_CHAR_W * len(value) + 8


def short(text: str) -> str:
    """The label as plain text, badges as ⟨name⟩ (what the `nodes` trait holds)."""
    return " ".join(v if k == "text" else f"⟨{v}⟩" for k, v in fit_parts(label_parts(text)))


MARK_STYLE = {  # event -> (stroke colour, legend)
    "hit": ("#2471a3", "hit"),
    "split": ("#b7950b", "split"),
    "insert": ("#1e8449", "inserted"),
    "evict": ("#7f8c8d", "evicted"),
}
FLASH_SECONDS = 1.5


DEEP = 6  # deeper than this many levels: the indented, top-down layout


def tree_svg(nodes: list[dict[str, Any]], max_nodes: int = 60,
             marks: dict[int, list[tuple[str, float]]] | None = None) -> tuple[str, int]:
    """(SVG markup, number of hidden nodes) for a snapshot's nodes (ghosts included).

    Shallow trees grow left to right (depth across, leaves down, each column as wide as its
    widest box); deeper ones (a long chat) are drawn top down, one node a row, indented by
    depth, so a chain reads downwards instead of running off to the right."""
    marks = marks or {}
    kept = busiest(nodes, max_nodes, set(marks))
    pos = layout(nodes, kept)
    rec = recency(nodes)
    by_id = {n["id"]: n for n in nodes}
    hidden_below = {nid: 0 for nid in kept}
    for n in nodes:
        if n["id"] not in kept and n["parent"] in kept:
            hidden_below[n["parent"]] += 1 + _count_below(nodes, n["id"])
    num_hidden = sum(1 for n in nodes if n["id"] not in kept and not n.get("evicted"))
    deep = max((c for c, _ in pos.values()), default=0) >= DEEP
    xy = _indented(nodes, kept) if deep else _columns(pos, by_id)
    parts = [_edge_svg(xy[by_id[nid]["parent"]], xy[nid], by_id[by_id[nid]["parent"]], deep)
             for nid in xy if by_id[nid]["parent"] in xy]  # edges first, under the boxes
    parts += [_node_svg(by_id[nid], x, y, rec[nid], hidden_below[nid], marks.get(nid))
              for nid, (x, y) in xy.items()]
    right = max((x + _w(by_id[nid]) + (8 + 7 * len(str(hidden_below[nid])) + 8
                                        if hidden_below[nid] else 0)
                 for nid, (x, _) in xy.items()), default=40)
    note = (f"{num_hidden} nodes hidden (showing the {len(kept)} busiest and active)"
            if num_hidden else "")
    width = max(right + 8, 7 * len(note) + 8)
    height = max((y for _, y in xy.values()), default=0) + ROW_H + (20 if note else 4)
    if note:
        parts.append(f'<text x="4" y="{height - 6}" fill="#777" class="lmnb-dim" '
                     f'font-family="sans-serif">{note}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'class="lmnb-tree{" lmnb-tree-deep" if deep else ""}">{"".join(parts)}</svg>',
            num_hidden)


GAP = 26  # between a column's widest box and the next column


def _columns(pos: dict[int, tuple[int, float]], by_id: dict[int, dict[str, Any]]
             ) -> dict[int, tuple[int, int]]:
    """Pixel positions of the left-to-right layout: each column as wide as its widest box."""
    widest: dict[int, int] = {}
    for nid, (c, _) in pos.items():
        widest[c] = max(widest.get(c, 0), _w(by_id[nid]))
    left = [4]
    for c in range(max(widest, default=0) + 1):
        left.append(left[-1] + widest.get(c, 0) + GAP)
    return {nid: (left[c], round(r * ROW_H) + 6) for nid, (c, r) in pos.items()}


INDENT = 18


def _indented(nodes: list[dict[str, Any]], kept: set[int]) -> dict[int, tuple[int, int]]:
    """Pixel positions of the top-down layout: depth-first order, a row each, indented."""
    children = children_of([n for n in nodes if n["id"] in kept])
    out: dict[int, tuple[int, int]] = {}

    def place(n: dict[str, Any], depth: int) -> None:
        out[n["id"]] = (4 + depth * INDENT, len(out) * ROW_H + 6)
        for c in children.get(n["id"], []):
            place(c, depth + 1)

    for root in children.get(None, []):
        place(root, 0)
    return out


def _edge_svg(parent: tuple[int, int], child: tuple[int, int], pnode: dict[str, Any],
              deep: bool) -> str:
    (px, py), (cx, cy) = parent, child
    if deep:  # an elbow down the parent's left side, then across
        return (f'<path d="M{px + 8},{py + 20} V{cy + 10} H{cx}" fill="none" stroke="#999" '
                f'class="lmnb-edge"/>')
    return (f'<path d="M{px + _w(pnode)},{py + 10} C{px + _w(pnode) + GAP / 2},{py + 10} '
            f'{cx - GAP / 2},{cy + 10} {cx},{cy + 10}" fill="none" stroke="#999" '
            f'class="lmnb-edge"/>')


def _label(n: dict[str, Any]) -> list[tuple[str, str]]:
    return [("text", "root")] if n["parent"] is None else fit_parts(label_parts(n.get("text", "")))


def _w(n: dict[str, Any]) -> int:
    """A box is as wide as its label and its token count."""
    count = "" if n["parent"] is None else f" {n['num_tokens']}"
    return round(sum(_part_w(k, v) for k, v in _label(n)) + CHAR_W * len(count)) + 10


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


def _label_svg(parts: list[tuple[str, str]], x: float, y: int, deco: str) -> tuple[str, float]:
    """(SVG, the x after it) of a label: words as text, badges as small rounded chips."""
    out = []
    for kind, value in parts:
        w = _part_w(kind, value)
        if kind == "badge":
            out.append(f'<g class="lmnb-badge"><rect x="{x:.1f}" y="{y + 4}" width="{w - 2:.1f}" '
                       f'height="12" rx="3" fill="#000" fill-opacity="0.14"/><text '
                       f'x="{x + 3:.1f}" y="{y + 13}" font-size="9" fill="#1b1b1b" '
                       f'font-family="monospace">{escape(value)}</text></g>')
        else:
            out.append(f'<text x="{x:.1f}" y="{y + 14}" font-size="11" fill="#1b1b1b" '
                       f'font-family="monospace" xml:space="preserve"{deco}>{escape(value)}'
                       f"</text>")
        x += w
    return "".join(out), x


def _node_svg(n: dict[str, Any], x: int, y: int, r: float, hidden: int,
              mark: list[tuple[str, float]] | None = None) -> str:
    cls, stroke = _stroke(n, mark)
    locked = " lmnb-node-locked" if n["lock"] and "locked" not in cls else ""
    event = "".join(f" · {kind} {age:.1f}s ago" for kind, age in mark or [])
    state = "evicted" if n.get("evicted") else f"lock {n['lock']}"
    title = (f"{n['num_tokens']} tokens · {n['num_hits']} hits · {state}{event}\n"
             f"{n.get('text', '')}")
    more = (f'<text x="{x + _w(n) + 4}" y="{y + 14}" fill="#888" class="lmnb-dim" '
            f'font-family="sans-serif">+{hidden}</text>' if hidden else "")
    fill = "#ffffff" if n.get("evicted") else colour(r)
    deco = ' text-decoration="line-through"' if n.get("evicted") else ""
    label, after = _label_svg(_label(n), x + 5, y, deco)
    count = ("" if n["parent"] is None else
             f'<text x="{after:.1f}" y="{y + 14}" font-size="11" fill="#6b6b6b" '
             f'font-family="monospace" class="lmnb-count" xml:space="preserve"> '
             f'{n["num_tokens"]}</text>')
    return (f'<g class="lmnb-node{cls}{locked}" data-node-id="{n["id"]}" '
            f'style="--r:{r:.2f}"><title>{escape(title)}</title>'
            f'<rect x="{x}" y="{y}" width="{_w(n)}" height="20" rx="4" '
            f'fill="{fill}"{stroke}/>{label}{count}{more}</g>')


def legend_html() -> str:
    """The tree's key, as inline-styled HTML (shows without the package's CSS too)."""
    items = [("#c0392b", "locked (in use)")] + [(c, name) for c, name in MARK_STYLE.values()]
    swatches = "".join(
        f'<span style="border:2px solid {c};border-radius:3px;padding:0 4px;margin-right:6px">'
        f"{escape(name)}</span>" for c, name in items)
    return (f'<div class="lmnb-legend" style="margin:2px 0">{swatches}<span class="lmnb-dim" '
            'style="color:#888">fill: grey old → orange recently used · the number: the '
            "node's tokens</span></div>")
