"""Constrained decoding: regex, JSON schema and choices as token masks, with jump-forward.

The engine's contract (see ARCHITECTURE.md, Grammar): `GrammarCompiler(hf_tokenizer,
vocab_size).compile(params)` -> `CompiledGrammar | None`; `.new_state()` -> `GrammarState` per
request. `explain(regex)` is the teaching view of a small regex's character-level FSM.
Backed by llguidance; this package never imports the engine or the language layer.
"""

from lmnb.runtime.grammar.bitmask import allocate_bitmask, apply_bitmask_, unpack_bitmask
from lmnb.runtime.grammar.compiler import CompiledGrammar, GrammarCompiler
from lmnb.runtime.grammar.dtypes import regex_for_choices, regex_for_dtype
from lmnb.runtime.grammar.errors import GrammarError
from lmnb.runtime.grammar.explain import explain
from lmnb.runtime.grammar.render import to_dot, to_svg
from lmnb.runtime.grammar.state import GrammarState

__all__ = [
    "CompiledGrammar",
    "GrammarCompiler",
    "GrammarError",
    "GrammarState",
    "allocate_bitmask",
    "apply_bitmask_",
    "explain",
    "regex_for_choices",
    "regex_for_dtype",
    "to_dot",
    "to_svg",
    "unpack_bitmask",
]
