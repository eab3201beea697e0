"""The primitives of the language: frozen dataclasses a program appends to its state.

Owns the node types and how they combine with `+` (`"Q: " + gen("a")` is an `ExprList`).
Knows nothing of how nodes run (see `interpreter`) or are drawn (see `tracer`). The fork/join
ops hold the states they act on, typed loosely, so that this module imports nothing of ours
but `choices`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from lmnb.lang.choices import ChoicesMethod

# SGLang's public regexes (`sglang.lang.ir.REGEX_*`), with SGLang's values, for programs that pass
# them as `regex=`. `gen(dtype=...)` runs under the runtime's dtype regexes instead
# (`lmnb.runtime.grammar.dtypes`: numbers bounded so that every value parses, a str not empty).
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""


class Expr:
    """Anything that can be appended to a program state; `+` makes an `ExprList`."""

    def __add__(self, other: object) -> ExprList:
        return ExprList((*flatten(self), *flatten(as_expr(other))))

    def __radd__(self, other: object) -> ExprList:
        return ExprList((*flatten(as_expr(other)), *flatten(self)))


@dataclass(frozen=True)
class Text(Expr):
    value: str


@dataclass(frozen=True)
class Gen(Expr):
    name: str | None
    # SamplingParams field -> value; merged over the run's defaults with `dataclasses.replace`.
    overrides: Mapping[str, Any] = field(default_factory=dict, hash=False)
    dtype: type | None = None  # int, float, bool or str: the regex in `overrides` came from it

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", MappingProxyType(dict(self.overrides)))


@dataclass(frozen=True)
class Select(Expr):
    name: str | None
    choices: tuple[str, ...]
    method: ChoicesMethod
    temperature: float = 0.0


@dataclass(frozen=True)
class RoleBegin(Expr):
    role: str


@dataclass(frozen=True)
class RoleEnd(Expr):
    role: str


@dataclass(frozen=True)
class VarScopeBegin(Expr):
    name: str


@dataclass(frozen=True)
class VarScopeEnd(Expr):
    name: str


@dataclass(frozen=True)
class SetVar(Expr):
    name: str
    value: Any = field(hash=False)


@dataclass(frozen=True)
class Fork(Expr):
    """Commit the prefix once, then start each child from a copy of this state."""

    children: tuple[Any, ...] = field(hash=False)  # interpreter.StreamExecutor


@dataclass(frozen=True)
class Join(Expr):
    """Wait for the children; gather their new variables as lists, or append their texts."""

    children: tuple[Any, ...] = field(hash=False)
    mode: str = "gather_variable"


class Placeholder(Expr):
    """A value unknown while tracing. As a str (`str(x)`, f-strings) it becomes a marker that
    the tracer turns back into this node, so `f"Q: {question}"` traces as text + placeholder."""

    name: str

    def __str__(self) -> str:
        return f"{MARK}{type(self).__name__}:{self.name}{MARK}"


@dataclass(frozen=True)
class Argument(Placeholder):
    """A program argument while tracing."""

    name: str


@dataclass(frozen=True)
class Variable(Placeholder):
    """A variable read while tracing (`s["x"]`)."""

    name: str


@dataclass(frozen=True)
class ExprList(Expr):
    items: tuple[Expr, ...]


MARK = "\x00"
_MARKED = re.compile(f"{MARK}(Argument|Variable):([^{MARK}]*){MARK}")


def unmark(text: str) -> list[Expr]:
    """`text` with the placeholders written into it as nodes again."""
    parts = _MARKED.split(text)
    out: list[Expr] = [Text(parts[0])] if parts[0] else []
    for i in range(1, len(parts), 3):
        kind = Argument if parts[i] == "Argument" else Variable
        out.append(kind(parts[i + 1]))
        out += [Text(parts[i + 2])] if parts[i + 2] else []
    return out


def as_expr(value: object) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Text(value)
    raise TypeError(f"a program state accepts str or lmnb expressions, got {type(value).__name__}")


def flatten(expr: Expr) -> Iterator[Expr]:
    """The leaves of nested `ExprList`s, in order; empty texts dropped."""
    match expr:
        case ExprList(items=items):
            for item in items:
                yield from flatten(item)
        case Text(value=""):
            return
        case _:
            yield expr
