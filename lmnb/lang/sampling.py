"""SGLang-named sampling arguments -> `SamplingParams` field overrides, and dtype regexes.

Owns the one table of renames between SGLang's frontend names (`max_tokens`, `return_logprob`,
...) and the runtime's `SamplingParams` fields, and the arguments SGLang accepts that lmnb does
not implement. The dtype regexes themselves are the runtime's (`lmnb.runtime.grammar.dtypes`,
their one definition), imported when a typed gen is made. Knows nothing of programs or states;
imports no torch at import time (the runtime's `SamplingParams` is imported where a run starts).
"""

from __future__ import annotations

import re
from typing import Any

# SGLang name -> SamplingParams field.
RENAMES = {
    "max_tokens": "max_new_tokens",
    "min_tokens": "min_new_tokens",
    "return_logprob": "return_logprobs",
}

# SGLang arguments lmnb accepts only at their neutral value.
NEUTRAL = {
    "n": (None, 1),
    "min_p": (None, 0.0),
    "frequency_penalty": (None, 0.0),
    "presence_penalty": (None, 0.0),
    "stop_regex": (None,),
    "top_logprobs_num": (None, 0),
}

# SGLang arguments accepted with any value and no effect: logprob triples always carry the
# token's text here (see `lmnb.lang.meta`).
NO_EFFECT = {"return_text_in_logprobs"}

_DTYPE_NAMES = {"int": int, "float": float, "bool": bool, "str": str}


# A number has no end of its own: constrained to digits, a model would rather write more
# digits than end the text. So a number gen may end with one of these characters (where the
# model wants to stop, e.g. "24" + "."), and the interpreter cuts it off (`cut_number_end`).
NUMBER_END = {int: r"[ \n.,;:)]", float: r"[ \n,;:)]"}


def as_dtype(dtype: type | str) -> type:
    dtype = _DTYPE_NAMES.get(dtype, dtype) if isinstance(dtype, str) else dtype
    if dtype not in _DTYPE_NAMES.values():
        raise ValueError(f"dtype must be one of int, float, bool, str; got {dtype!r}")
    return dtype


def gen_regex(dtype: type) -> str:
    """The regex a gen of `dtype` runs under: the value's regex, then a number's end."""
    return regex_for_dtype(dtype) + NUMBER_END.get(dtype, "")


def cut_number_end(dtype: type | None, text: str) -> str:
    """The value of a gen of `dtype` whose text is `text` (a number loses its end character)."""
    if dtype in NUMBER_END and text and re.fullmatch(NUMBER_END[dtype], text[-1]):
        return text[:-1]
    return text


def regex_for_dtype(dtype: type | str) -> str:
    """The regex of a `dtype` value: the runtime grammar's (its one definition)."""
    from lmnb.runtime.grammar.dtypes import regex_for_dtype as grammar_regex_for_dtype

    return grammar_regex_for_dtype(as_dtype(dtype))


def sampling_overrides(**kwargs: Any) -> dict[str, Any]:
    """SGLang-style keyword arguments as `SamplingParams` field overrides (None means unset).

    Unknown names pass through under their own name; `SamplingParams.merged` rejects them.
    """
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        if name in NO_EFFECT:
            continue
        if name in NEUTRAL:
            _check_neutral(name, value)
        elif value is not None:
            out[RENAMES.get(name, name)] = value
    if out.get("top_k") == -1:  # SGLang's "no top-k"
        out["top_k"] = 0
    return out


def _check_neutral(name: str, value: Any) -> None:
    if value not in NEUTRAL[name]:
        raise NotImplementedError(f"lmnb does not implement {name}={value!r}")
