"""Regex AST -> NFA -> minimal DFA over characters, for the teaching view.

Owns `CharDfa` and its construction: Thompson NFA, subset construction over the disjoint atoms
of the character sets used, Moore minimisation, dead-state pruning, and breadth-first state
numbering (so the same regex always gives the same numbers). Knows nothing of tokens; sizes are
capped because it exists to draw small regexes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lmnb.runtime.grammar.charset import CharSet, atoms
from lmnb.runtime.grammar.errors import GrammarError
from lmnb.runtime.grammar.regex_parse import Alt, Chars, Concat, Node, Repeat, parse_regex

MAX_NFA_STATES = 5000
MAX_DFA_STATES = 300


@dataclass(frozen=True)
class CharDfa:
    num_states: int
    start: int
    accepting: frozenset[int]
    edges: tuple[tuple[int, int, CharSet], ...]  # (src, dst, chars); one edge per (src, dst)


def regex_to_dfa(regex: str) -> CharDfa:
    nfa = _Nfa()
    start, end = nfa.build(parse_regex(regex))
    return _number(_prune(_minimise(_determinise(nfa, start, end))))


class _Nfa:
    def __init__(self) -> None:
        self.moves: list[list[tuple[CharSet | None, int]]] = []  # None: epsilon

    def state(self) -> int:
        if len(self.moves) >= MAX_NFA_STATES:
            raise GrammarError("regex too large for explain() (it draws small regexes)")
        self.moves.append([])
        return len(self.moves) - 1

    def build(self, node: Node) -> tuple[int, int]:
        """A fragment with one entry and one exit state for node."""
        match node:
            case Chars(chars):
                a, b = self.state(), self.state()
                self.moves[a].append((chars, b))
                return a, b
            case Concat(parts):
                a = b = self.state()
                for part in parts:
                    s, e = self.build(part)
                    self.moves[b].append((None, s))
                    b = e
                return a, b
            case Alt(options):
                a, b = self.state(), self.state()
                for option in options:
                    s, e = self.build(option)
                    self.moves[a].append((None, s))
                    self.moves[e].append((None, b))
                return a, b
            case Repeat(inner, low, high):
                return self.repeat(inner, low, high)
        raise TypeError(f"unknown regex node {node!r}")

    def repeat(self, inner: Node, low: int, high: int | None) -> tuple[int, int]:
        a = b = self.state()
        for _ in range(low):
            s, e = self.build(inner)
            self.moves[b].append((None, s))
            b = e
        if high is None:  # a loop: exit, or go round again
            s, e = self.build(inner)
            self.moves[b].append((None, s))
            self.moves[e].append((None, b))
            return a, b
        end = self.state()
        self.moves[b].append((None, end))
        for _ in range(high - low):  # each optional copy may be skipped to the end
            s, e = self.build(inner)
            self.moves[b].append((None, s))
            self.moves[e].append((None, end))
            b = e
        return a, end

    def closure(self, states: frozenset[int]) -> frozenset[int]:
        seen, todo = set(states), list(states)
        while todo:
            for chars, dst in self.moves[todo.pop()]:
                if chars is None and dst not in seen:
                    seen.add(dst)
                    todo.append(dst)
        return frozenset(seen)


@dataclass
class _Table:
    """A DFA as a transition table over atoms: delta[state][atom] = state or -1."""
    alphabet: list[CharSet]
    delta: list[list[int]]
    accepting: set[int]
    start: int = 0


def _determinise(nfa: _Nfa, start: int, end: int) -> _Table:
    alphabet = atoms(c for moves in nfa.moves for c, _ in moves if c is not None)
    first = nfa.closure(frozenset([start]))
    index, order, delta = {first: 0}, [first], []
    while len(delta) < len(order):
        current = order[len(delta)]
        row = []
        for atom in alphabet:
            code = atom.ranges[0][0]
            moved = {d for s in current for c, d in nfa.moves[s]
                     if c is not None and c.contains(code)}
            if not moved:
                row.append(-1)
                continue
            target = nfa.closure(frozenset(moved))
            if target not in index:
                if len(order) >= MAX_DFA_STATES:
                    raise GrammarError("regex too large for explain() (it draws small regexes)")
                index[target] = len(order)
                order.append(target)
            row.append(index[target])
        delta.append(row)
    accepting = {i for i, states in enumerate(order) if end in states}
    return _Table(alphabet, delta, accepting)


def _minimise(table: _Table) -> _Table:
    """Moore's partition refinement: merge states no string can tell apart."""
    block = [int(i in table.accepting) for i in range(len(table.delta))]
    while True:
        signatures = [(block[i], tuple(block[t] if t >= 0 else -1 for t in row))
                      for i, row in enumerate(table.delta)]
        ids: dict[tuple, int] = {}
        refined = [ids.setdefault(sig, len(ids)) for sig in signatures]
        if len(ids) == len(set(block)):
            break
        block = refined
    block = refined
    delta = [[] for _ in range(len(ids))]
    for i, row in enumerate(table.delta):
        delta[block[i]] = [block[t] if t >= 0 else -1 for t in row]
    accepting = {block[i] for i in table.accepting}
    return _Table(table.alphabet, delta, accepting, block[table.start])


def _prune(table: _Table) -> _Table:
    """Drop transitions into states from which no accepting state is reachable."""
    live = set(table.accepting)
    changed = True
    while changed:
        changed = False
        for i, row in enumerate(table.delta):
            if i not in live and any(t in live for t in row):
                live.add(i)
                changed = True
    if table.start not in live:
        raise GrammarError("regex matches no string")
    delta = [[t if t in live else -1 for t in row] for row in table.delta]
    return _Table(table.alphabet, delta, table.accepting & live, table.start)


def _number(table: _Table) -> CharDfa:
    """Renumber reachable states breadth-first from the start; one CharSet per (src, dst)."""
    order, index, todo = [table.start], {table.start: 0}, deque([table.start])
    while todo:
        for t in table.delta[todo.popleft()]:
            if t >= 0 and t not in index:
                index[t] = len(order)
                order.append(t)
                todo.append(t)
    edges = []
    for old in order:
        grouped: dict[int, CharSet] = {}
        for atom, t in zip(table.alphabet, table.delta[old]):
            if t >= 0:
                grouped[index[t]] = grouped[index[t]].union(atom) if index[t] in grouped else atom
        edges += [(index[old], dst, chars) for dst, chars in sorted(grouped.items())]
    accepting = frozenset(index[a] for a in table.accepting if a in index)
    return CharDfa(len(order), 0, accepting, tuple(edges))
