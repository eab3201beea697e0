"""`program.trace(...)`: the graph of a program, found by running its body without a model.

Owns `TraceState` (a state that records what is appended instead of running it; arguments not
given are `Argument` placeholders and `s["x"]` is a `Variable` placeholder), `ProgramGraph` (text,
gen, select, role, fork and join nodes with edges along each stream, from fork to children and
from children to join), its DOT/SVG rendering (graphviz `dot` when installed, a plain SVG
layout otherwise) and the constant prefix every run starts with (what `run_batch` prefills).
Placeholders written into strings (`f"Q: {question}"`) stay placeholders; tracing stops quietly
at the first value it cannot use (e.g. `int(s["x"])`).
Knows nothing of backends, token ids or the interpreter.
"""

from __future__ import annotations

import html
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lmnb.lang.ir import (
    Argument,
    Expr,
    ExprList,
    Fork,
    Gen,
    Join,
    Placeholder,
    RoleBegin,
    RoleEnd,
    Select,
    SetVar,
    Text,
    Variable,
    VarScopeBegin,
    VarScopeEnd,
    as_expr,
    flatten,
    unmark,
)
from lmnb.lang.state import ForkGroup, StateBase

COLORS = {
    "text": "#f2f2f2",
    "gen": "#cfe8ff",
    "select": "#d9f2d0",
    "role": "#fde9c8",
    "scope": "#eee0f8",
    "set": "#eee0f8",
    "fork": "#ffd6d6",
    "join": "#ffd6d6",
}
_LABEL_LEN = 40


@dataclass
class GraphNode:
    id: int
    stream: int
    kind: str
    exprs: list[Expr] = field(default_factory=list)

    @property
    def label(self) -> str:
        if self.kind == "text":
            return _short("".join(_piece(e) for e in self.exprs))
        return _label(self.exprs[0])


class ProgramGraph:
    def __init__(self, name: str) -> None:
        self.name = name
        self.nodes: list[GraphNode] = []
        self.edges: list[tuple[int, int]] = []
        self.streams: list[int] = [0]  # in order of creation; 0 is the root
        self.stopped: str | None = None  # why tracing ended early, if it did
        self._last: dict[int, int | None] = {0: None}  # stream -> its last node

    def new_stream(self) -> int:
        stream = len(self.streams)
        self.streams.append(stream)
        self._last[stream] = None
        return stream

    def add(self, stream: int, expr: Expr) -> None:
        kind = _kind(expr)
        last = self._last[stream]
        if kind == "text" and last is not None and self.nodes[last].kind == "text":
            self.nodes[last].exprs.append(expr)  # consecutive texts draw as one node
            return
        node = GraphNode(len(self.nodes), stream, kind, [expr])
        self.nodes.append(node)
        if last is not None:
            self.edges.append((last, node.id))
        self._last[stream] = node.id
        match expr:
            case Fork(children=children):
                for child in children:
                    self._last[child] = node.id
            case Join(children=children):
                self.edges += [
                    (self._last[c], node.id) for c in children if self._last[c] is not None
                ]

    def exprs(self, stream: int = 0) -> Iterator[Expr]:
        for node in self.nodes:
            if node.stream == stream:
                yield from node.exprs

    def constant_prefix(self) -> list[Expr]:
        """The leading texts and roles of the root stream: the same in every run."""
        prefix = []
        for expr in self.exprs(0):
            if not isinstance(expr, Text | RoleBegin | RoleEnd):
                break
            prefix.append(expr)
        return prefix

    def to_dict(self) -> dict[str, Any]:
        nodes = [
            {"id": n.id, "stream": n.stream, "kind": n.kind, "label": n.label} for n in self.nodes
        ]
        return {"name": self.name, "nodes": nodes, "edges": self.edges, "stopped": self.stopped}

    def to_dot(self) -> str:
        lines = [
            f"digraph {_dot_str(self.name)} {{",
            '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        ]
        for n in self.nodes:
            lines.append(
                f"  n{n.id} [label={_dot_str(n.label)}, fillcolor={_dot_str(COLORS[n.kind])}];"
            )
        lines += [f"  n{a} -> n{b};" for a, b in self.edges]
        lines.append("}")
        return "\n".join(lines)

    def _repr_svg_(self) -> str:
        return to_svg(self)

    def __repr__(self) -> str:
        lines = [f"ProgramGraph({self.name!r}, {len(self.nodes)} nodes)"]
        lines += [f"  [{n.id}] stream {n.stream} {n.kind}: {n.label}" for n in self.nodes]
        if self.stopped:
            lines.append(f"  (tracing stopped: {self.stopped})")
        return "\n".join(lines)


class TraceState(StateBase):
    """Records appends into a graph; reads return placeholders."""

    def __init__(self, graph: ProgramGraph, stream: int = 0) -> None:
        self._graph = graph
        self._stream = stream
        self.ret_value: Any = None

    def __iadd__(self, expr: object) -> TraceState:
        leaves = [x for leaf in flatten(as_expr(expr)) for x in _unmark(leaf)]
        for node in _with_placeholders_joined(leaves):
            self._graph.add(self._stream, node)
        return self

    def __getitem__(self, name: str) -> Variable:
        return Variable(name)

    def fork(self, size: int = 1, position_ids_offset: Any = None) -> ForkGroup:
        streams = tuple(self._graph.new_stream() for _ in range(size))
        self._graph.add(self._stream, Fork(streams))
        return ForkGroup([TraceState(self._graph, s) for s in streams], self)

    def _join(self, children: list[TraceState], mode: str) -> None:
        self._graph.add(self._stream, Join(tuple(c._stream for c in children), mode))

    def text(self) -> str:
        return ""

    def messages(self) -> list[dict[str, str]]:
        return []

    def get_meta_info(self, name: str) -> dict[str, Any]:
        return {}

    def sync(self) -> TraceState:
        return self

    def text_iter(self, var_name: str | None = None) -> Iterator[str]:
        return iter(())


def trace(program: Any, *args: Any, **kwargs: Any) -> ProgramGraph:
    """Run `program`'s body on a `TraceState`; arguments not given become placeholders."""
    bound = program.signature.bind_partial(None, *args, **kwargs)
    bound.apply_defaults()
    for name in program.arg_names:
        bound.arguments.setdefault(name, Argument(name))
    graph = ProgramGraph(program.name)
    state = TraceState(graph)
    try:
        program.func(state, *bound.args[1:], **bound.kwargs)
    except Exception as exc:  # the first unknowable value ends the trace
        graph.stopped = f"{type(exc).__name__}: {exc}"
    return graph


def to_svg(graph: ProgramGraph) -> str:
    """SVG from graphviz `dot` when installed, else from `plain_svg`."""
    if shutil.which("dot"):
        try:
            done = subprocess.run(
                ["dot", "-Tsvg"], input=graph.to_dot(), capture_output=True, text=True, timeout=10
            )
            if done.returncode == 0:
                return done.stdout
        except (OSError, subprocess.SubprocessError):
            pass
    return plain_svg(graph)


def plain_svg(graph: ProgramGraph, width: int = 240, height: int = 26, gap: int = 14) -> str:
    """A dependency-free layout: one column per stream, one row per node in program order."""
    col = {s: i for i, s in enumerate(graph.streams)}
    pos = {
        n.id: (10 + col[n.stream] * (width + gap), 10 + n.id * (height + gap)) for n in graph.nodes
    }
    parts = []
    for a, b in graph.edges:
        (xa, ya), (xb, yb) = pos[a], pos[b]
        parts.append(
            f'<line x1="{xa + width / 2}" y1="{ya + height}" x2="{xb + width / 2}" y2="{yb}" '
            'stroke="#888" marker-end="url(#arrow)"/>'
        )
    for n in graph.nodes:
        x, y = pos[n.id]
        parts.append(
            f'<rect x="{x}" y="{y}" width="{width}" height="{height}" rx="6" '
            f'fill="{COLORS[n.kind]}" stroke="#666"/>'
            f'<text x="{x + 8}" y="{y + height * 0.65}" font-family="Helvetica" '
            f'font-size="11">{html.escape(n.label)}</text>'
        )
    total_w = 20 + len(graph.streams) * (width + gap)
    total_h = 20 + len(graph.nodes) * (height + gap)
    arrow = (
        '<defs><marker id="arrow" markerWidth="8" markerHeight="8" refX="8" refY="4" '
        'orient="auto"><path d="M0,0 L8,4 L0,8 z" fill="#888"/></marker></defs>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}">'
        f"{arrow}{''.join(parts)}</svg>"
    )


def _unmark(leaf: Expr) -> list[Expr]:
    return unmark(leaf.value) if isinstance(leaf, Text) else [leaf]


def _with_placeholders_joined(leaves: list[Expr]) -> list[Expr]:
    """In a real run `"Q: " + question + "\\n"` is one str, tokenised as one piece; so a run of
    texts that holds a placeholder stays one node (an `ExprList`), never a constant text."""
    out: list[Expr] = []
    run: list[Expr] = []
    for leaf in [*leaves, None]:
        if isinstance(leaf, Text | Placeholder):
            run.append(leaf)
            continue
        if any(isinstance(x, Placeholder) for x in run):
            out.append(ExprList(tuple(run)))
        else:
            out += run
        run = []
        if leaf is not None:
            out.append(leaf)
    return out


def _kind(expr: Expr) -> str:
    match expr:
        case Text() | Argument() | Variable() | ExprList():
            return "text"
        case Gen():
            return "gen"
        case Select():
            return "select"
        case RoleBegin() | RoleEnd():
            return "role"
        case VarScopeBegin() | VarScopeEnd():
            return "scope"
        case SetVar():
            return "set"
        case Fork():
            return "fork"
        case Join():
            return "join"
        case _:
            raise TypeError(f"cannot trace {type(expr).__name__} nodes")


def _piece(expr: Expr) -> str:
    match expr:
        case Text(value=value):
            return value
        case Argument(name=name):
            return f"{{{name}}}"
        case Variable(name=name):
            return f"{{s[{name!r}]}}"
        case ExprList(items=items):
            return "".join(_piece(x) for x in items)
        case _:
            return ""


def _label(expr: Expr) -> str:
    match expr:
        case Gen(name=name, overrides=overrides):
            args = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
            return _short(f"gen {name or ''}({args})")
        case Select(name=name, choices=choices):
            return _short(f"select {name or ''}: {' | '.join(choices)}")
        case RoleBegin(role=role):
            return f"<{role}>"
        case RoleEnd(role=role):
            return f"</{role}>"
        case VarScopeBegin(name=name):
            return f"var_scope {name} begin"
        case VarScopeEnd(name=name):
            return f"var_scope {name} end"
        case SetVar(name=name):
            return f"s[{name!r}] = ..."
        case Fork(children=children):
            return f"fork x{len(children)}"
        case Join(mode=mode):
            return f"join ({mode})"
        case _:
            return type(expr).__name__


def _short(text: str) -> str:
    text = text.replace("\n", "\u21b5")
    return text if len(text) <= _LABEL_LEN else text[: _LABEL_LEN - 1] + "\u2026"


def _dot_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
