"""A small regex parser for the teaching view: regex text -> an AST over character sets.

Owns the syntax `explain()` understands: literals, escapes (\\d \\w \\s and their negations,
\\n \\t \\xHH, escaped punctuation), classes `[a-z]` / `[^...]`, `.`, groups `(...)` and
`(?:...)`, `|`, and the quantifiers `?` `*` `+` `{m}` `{m,}` `{m,n}`. Knows nothing of automata;
the production grammar compiler (llguidance) has its own, fuller parser.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmnb.runtime.grammar.charset import CharSet
from lmnb.runtime.grammar.errors import GrammarError

MAX_REPEAT = 100  # {m,n} bounds past this are too big to draw anyway


@dataclass(frozen=True)
class Chars:
    chars: CharSet


@dataclass(frozen=True)
class Concat:
    parts: tuple[Node, ...]


@dataclass(frozen=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True)
class Repeat:
    node: Node
    min: int
    max: int | None  # None: unbounded


Node = Chars | Concat | Alt | Repeat

_DIGIT = CharSet.of([(ord("0"), ord("9"))])
_WORD = CharSet.of([(ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("a"), ord("z")),
                    (ord("_"), ord("_"))])
_SPACE = CharSet.of([(9, 13), (32, 32)])
_CLASS_ESCAPES = {"d": _DIGIT, "w": _WORD, "s": _SPACE, "D": _DIGIT.complement(),
                  "W": _WORD.complement(), "S": _SPACE.complement()}
_CHAR_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "0": "\0"}
_DOT = CharSet.char("\n").complement()


def parse_regex(regex: str) -> Node:
    return _Parser(regex).parse()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> Node:
        node = self.alternation()
        if self.pos < len(self.text):
            self.fail("unbalanced ')'" if self.peek() == ")" else "unexpected character")
        return node

    def fail(self, problem: str) -> None:
        raise GrammarError(f"invalid regex {self.text!r} at position {self.pos}: {problem}")

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def take(self) -> str:
        if self.pos >= len(self.text):
            self.fail("unexpected end of pattern")
        self.pos += 1
        return self.text[self.pos - 1]

    def alternation(self) -> Node:
        options = [self.concatenation()]
        while self.peek() == "|":
            self.pos += 1
            options.append(self.concatenation())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def concatenation(self) -> Node:
        parts: list[Node] = []
        while self.peek() not in (None, "|", ")"):
            parts.append(self.quantified(self.atom()))
        return parts[0] if len(parts) == 1 else Concat(tuple(parts))

    def quantified(self, node: Node) -> Node:
        while True:
            match self.peek():
                case "?":
                    node = Repeat(node, 0, 1)
                case "*":
                    node = Repeat(node, 0, None)
                case "+":
                    node = Repeat(node, 1, None)
                case "{":
                    node = self.braces(node)
                    continue
                case _:
                    return node
            self.pos += 1
            if self.peek() == "?":  # lazy: same language, same FSM
                self.pos += 1

    def braces(self, node: Node) -> Node:
        end = self.text.find("}", self.pos)
        body = self.text[self.pos + 1:end] if end > 0 else ""
        low, comma, high = body.partition(",")
        if end < 0 or not low.strip().isdigit() or (high.strip() and not high.strip().isdigit()):
            self.fail("bad repetition {m,n}")
        lo = int(low)
        hi = (int(high) if high.strip() else None) if comma else lo
        if (hi is not None and hi < lo) or max(lo, hi or 0) > MAX_REPEAT:
            self.fail(f"repetition {{{body}}} out of range (at most {MAX_REPEAT})")
        self.pos = end + 1
        return Repeat(node, lo, hi)

    def atom(self) -> Node:
        ch = self.take()
        match ch:
            case "(":
                return self.group()
            case "[":
                return Chars(self.char_class())
            case ".":
                return Chars(_DOT)
            case "\\":
                return Chars(self.escape())
            case "*" | "+" | "?" | "{":
                self.pos -= 1
                self.fail(f"nothing to repeat before {ch!r}")
            case "^" | "$":
                self.pos -= 1
                self.fail("anchors are not supported (the whole text always matches)")
        return Chars(CharSet.char(ch))

    def group(self) -> Node:
        if self.text.startswith("?:", self.pos):
            self.pos += 2
        elif self.peek() == "?":
            self.fail("only (...) and (?:...) groups are supported")
        node = self.alternation()
        if self.peek() != ")":
            self.fail("unclosed group: missing ')'")
        self.pos += 1
        return node

    def escape(self) -> CharSet:
        ch = self.take()
        if ch in _CLASS_ESCAPES:
            return _CLASS_ESCAPES[ch]
        if ch in _CHAR_ESCAPES:
            return CharSet.char(_CHAR_ESCAPES[ch])
        if ch in "xu":
            width = 2 if ch == "x" else 4
            digits = self.text[self.pos:self.pos + width]
            if len(digits) != width or any(c not in "0123456789abcdefABCDEF" for c in digits):
                self.fail(f"\\{ch} needs {width} hex digits")
            self.pos += width
            return CharSet.char(chr(int(digits, 16)))
        if ch.isalnum():
            self.fail(f"unknown escape \\{ch}")
        return CharSet.char(ch)

    def char_class(self) -> CharSet:
        negate = self.peek() == "^"
        self.pos += negate
        items: list[CharSet] = []
        first = True
        while first or self.peek() != "]":
            if self.peek() is None:
                self.fail("unclosed character class: missing ']'")
            items.append(self.class_item())
            first = False
        self.pos += 1
        chars = CharSet.of([r for item in items for r in item.ranges])
        return chars.complement() if negate else chars

    def class_item(self) -> CharSet:
        low = self.class_char()
        if self.peek() == "-" and self.text[self.pos + 1:self.pos + 2] not in ("]", ""):
            self.pos += 1
            high = self.class_char()
            singles = low.single() is not None and high.single() is not None
            if not singles or high.ranges[0][0] < low.ranges[0][0]:
                self.fail("bad range in character class")
            return CharSet.of([(low.ranges[0][0], high.ranges[0][0])])
        return low

    def class_char(self) -> CharSet:
        ch = self.take()
        return self.escape() if ch == "\\" else CharSet.char(ch)
