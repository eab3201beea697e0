"""Sets of characters as sorted, disjoint, inclusive code-point ranges.

Owns `CharSet`, the edge label of the teaching FSM (`explain`): set algebra, splitting a family
of sets into disjoint atoms (the DFA's alphabet), and a short regex-like label. Knows nothing of
regex syntax or automata.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MAX_CHAR = 0x10FFFF


@dataclass(frozen=True)
class CharSet:
    ranges: tuple[tuple[int, int], ...]  # sorted, disjoint, non-adjacent, inclusive

    @staticmethod
    def of(ranges: Iterable[tuple[int, int]]) -> CharSet:
        merged: list[list[int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return CharSet(tuple((lo, hi) for lo, hi in merged))

    @staticmethod
    def char(ch: str) -> CharSet:
        return CharSet(((ord(ch), ord(ch)),))

    def union(self, other: CharSet) -> CharSet:
        return CharSet.of(self.ranges + other.ranges)

    def complement(self) -> CharSet:
        out, start = [], 0
        for lo, hi in self.ranges:
            if lo > start:
                out.append((start, lo - 1))
            start = hi + 1
        if start <= MAX_CHAR:
            out.append((start, MAX_CHAR))
        return CharSet(tuple(out))

    def contains(self, code: int) -> bool:
        return any(lo <= code <= hi for lo, hi in self.ranges)

    def size(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)

    def single(self) -> str | None:
        """The one character in the set, or None."""
        if len(self.ranges) == 1 and self.ranges[0][0] == self.ranges[0][1]:
            return chr(self.ranges[0][0])
        return None

    def label(self) -> str:
        """The character itself when single, else a bracket class like `[0-9a-f]` or `[^\\n]`."""
        one = self.single()
        if one is not None:
            return one
        inverse = self.complement()
        if inverse.size() < self.size() and len(inverse.ranges) < len(self.ranges):
            return "[^" + _ranges_text(inverse.ranges) + "]"
        return "[" + _ranges_text(self.ranges) + "]"


def atoms(sets: Iterable[CharSet]) -> list[CharSet]:
    """Disjoint single-range sets such that each input set is a union of some of them."""
    sets = list(sets)
    cuts = sorted({edge for s in sets for lo, hi in s.ranges for edge in (lo, hi + 1)})
    out = []
    for lo, nxt in zip(cuts, cuts[1:]):
        if any(s.contains(lo) for s in sets):
            out.append(CharSet(((lo, nxt - 1),)))
    return out


def _ranges_text(ranges: tuple[tuple[int, int], ...]) -> str:
    parts = []
    for lo, hi in ranges:
        if lo == hi:
            parts.append(_class_char(lo))
        elif hi == lo + 1:
            parts.append(_class_char(lo) + _class_char(hi))
        else:
            parts.append(f"{_class_char(lo)}-{_class_char(hi)}")
    return "".join(parts)


def _class_char(code: int) -> str:
    ch = chr(code)
    escapes = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "]": "\\]", "\\": "\\\\", "-": "\\-",
               "^": "\\^"}
    if ch in escapes:
        return escapes[ch]
    if code < 0x20 or code == 0x7F:
        return f"\\x{code:02x}"
    if code > 0xFFFF:
        return f"\\U{code:08x}"
    if code > 0x7E and not ch.isprintable():
        return f"\\u{code:04x}"
    return ch
