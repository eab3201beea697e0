"""Regexes for typed generation and for choice lists.

Owns the regex text that `dtype=int|float|str|bool` and `choices=[...]` become. Knows nothing of
tokenizers or matchers: it only writes regex source in the syntax the compiler accepts (Rust
`regex` crate syntax, as used by llguidance).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmnb.runtime.grammar.errors import GrammarError

# Bounded so that every value parses with int()/float() and a walk always ends.
REGEX_INT = r"-?(0|[1-9][0-9]{0,17})"
REGEX_FLOAT = r"-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,15})?"
REGEX_BOOL = r"(True|False)"
# A double-quoted string of word characters, digits and whitespace: SGLang's REGEX_STR class
# (no punctuation, so a JSON value cannot run on as `",#Paris,#...`), but not empty: after
# `"capital": ` SmolLM2 closes an empty string at once (`""` is one token) where one or more
# characters make it write `"Paris"`.
REGEX_STR = r"\"[\w\d\s]+\""

_BY_TYPE: dict[type, str] = {int: REGEX_INT, float: REGEX_FLOAT, bool: REGEX_BOOL, str: REGEX_STR}
_BY_NAME: dict[str, type] = {"int": int, "float": float, "bool": bool, "str": str}

# Characters with a meaning in regex syntax; escaping them is always legal in Rust's `regex`.
_META = set("\\.+*?()|[]{}^$#&-~")
_CONTROL = {"\n": r"\n", "\r": r"\r", "\t": r"\t", "\f": r"\f", "\v": r"\v"}


def regex_for_dtype(dtype: type | str) -> str:
    """The regex a value of `dtype` (int, float, str, bool, or its name) is generated under.

    int and float values parse with `int()`/`float()`; bool is `True` or `False`; str is a
    double-quoted, non-empty run of word characters, digits and whitespace (strip the quotes
    to get the value).
    """
    kind = _BY_NAME.get(dtype) if isinstance(dtype, str) else dtype
    if kind not in _BY_TYPE:
        raise GrammarError(f"dtype must be one of int, float, str, bool; got {dtype!r}")
    return _BY_TYPE[kind]


def escape_literal(text: str) -> str:
    """`text` as a regex that matches exactly it."""
    out = []
    for ch in text:
        if ch in _META:
            out.append("\\" + ch)
        elif ch in _CONTROL:
            out.append(_CONTROL[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def regex_for_choices(choices: Sequence[str]) -> str:
    """A regex matching exactly one of `choices` (non-empty; duplicates are harmless)."""
    if not choices:
        raise GrammarError("choices is empty: give at least one string to choose from")
    bad = [c for c in choices if not isinstance(c, str)]
    if bad:
        raise GrammarError(f"choices must be strings; got {bad[0]!r}")
    return "(" + "|".join(escape_literal(c) for c in choices) + ")"
