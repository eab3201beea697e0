"""Compiling constraints (regex, JSON schema, choices) into grammars, with a cache.

Owns `GrammarCompiler` (one per tokenizer: wraps it for llguidance once, ~0.4 s) and
`CompiledGrammar` (an immutable compiled constraint that hands out per-request states). Errors
in the constraint surface here, at compile time, as `GrammarError`. Knows nothing of the engine
loop or of sampling; it only reads the constraint fields of `SamplingParams`.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import llguidance

from lmnb.runtime.grammar.dtypes import regex_for_choices
from lmnb.runtime.grammar.errors import GrammarError
from lmnb.runtime.grammar.state import GrammarState
from lmnb.runtime.params import SamplingParams

# JSON is generated the way `json.dumps` writes it: no free whitespace, ", " and ": ".
# Fixed separators make every key and punctuation run forced text (jump-forward material), and
# `": "`/`", "` are what this tokenizer family has tokens for (`":`, `",`, ` "`).
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "lenient": False,  # unknown keywords are an error, not silently ignored
}
_UNSUPPORTED_MARKERS = ("Unimplemented", "not supported", "Unsupported", "unsupported")


class CompiledGrammar:
    """One compiled constraint. Immutable and shareable across threads and requests."""

    def __init__(self, kind: str, text: str, grammar: str, prototype: llguidance.LLMatcher,
                 tokenizer: llguidance.LLTokenizer, vocab_size: int) -> None:
        self.kind = kind  # "regex" | "json" | "choices"
        self.text = text
        self.grammar = grammar  # llguidance's serialised grammar
        self._prototype = prototype  # never advanced; states are copies of it
        self._tokenizer = tokenizer
        self.vocab_size = vocab_size

    def new_state(self) -> GrammarState:
        """A fresh state at the start of the grammar, for one request (~1 µs)."""
        return GrammarState(self._prototype.deep_copy(), self._tokenizer, self.vocab_size)

    def __repr__(self) -> str:
        return f"CompiledGrammar({self.kind}, {self.text[:40]!r})"


class GrammarCompiler:
    """Compiles `SamplingParams` constraints for one tokenizer; thread-safe; cached by text."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, cache_size: int = 256) -> None:
        # vocab_size is the logits' width; ids past the tokenizer's own are never allowed.
        import llguidance.hf  # imports transformers: only where a tokenizer is wrapped

        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size)
        self.eos_ids: tuple[int, ...] = tuple(self.tokenizer.eos_tokens)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str], CompiledGrammar] = OrderedDict()
        self._lock = threading.Lock()

    def compile(self, params: SamplingParams) -> CompiledGrammar | None:
        """The grammar for params' regex, json_schema or choices; None when unconstrained."""
        if params.regex is not None:
            return self.compile_regex(params.regex)
        if params.json_schema is not None:
            return self.compile_json_schema(params.json_schema)
        if params.choices is not None:
            return self.compile_choices(params.choices)
        return None

    def compile_regex(self, regex: str) -> CompiledGrammar:
        return self._cached("regex", regex, lambda: _regex_grammar(regex))

    def compile_json_schema(self, schema: str) -> CompiledGrammar:
        return self._cached("json", schema, lambda: _json_grammar(schema))

    def compile_choices(self, choices: tuple[str, ...] | list[str]) -> CompiledGrammar:
        regex = regex_for_choices(choices)  # raises on an empty list
        return self._cached("choices", regex, lambda: _regex_grammar(regex))

    def _cached(self, kind: str, text: str, make_grammar: Any) -> CompiledGrammar:
        key = (kind, text)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        compiled = self._build(kind, text, make_grammar())  # outside the lock: ~1 ms, GIL freed
        with self._lock:
            compiled = self._cache.setdefault(key, compiled)  # a racing twin keeps the first
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return compiled

    def _build(self, kind: str, text: str, grammar: str) -> CompiledGrammar:
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(_describe(kind, text, matcher.get_error()))
        matcher.compute_logit_bias()  # the first mask: surfaces lexer errors, warms the copy
        if matcher.is_error():
            raise GrammarError(_describe(kind, text, matcher.get_error()))
        return CompiledGrammar(kind, text, grammar, matcher, self.tokenizer, self.vocab_size)


def _regex_grammar(regex: str) -> str:
    if not isinstance(regex, str):
        raise GrammarError(f"regex must be a string, got {type(regex).__name__}")
    return llguidance.LLMatcher.grammar_from_regex(regex)


def _json_grammar(text: str) -> str:
    try:
        schema = json.loads(text)
    except (TypeError, json.JSONDecodeError) as e:
        raise GrammarError(f"invalid JSON schema: not valid JSON ({e})") from None
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise GrammarError(f"invalid JSON schema: must be an object or true, got {schema!r:.60}")
    try:
        return llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_OPTIONS)
    except ValueError as e:
        raise GrammarError(f"invalid JSON schema: {e}") from None


def _describe(kind: str, text: str, error: str) -> str:
    """llguidance's error as one line naming the constraint and the problem."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    detail = next((ln[len("error:"):].strip() for ln in lines if ln.startswith("error:")), None)
    detail = detail or (lines[0] if lines else "unknown error")
    if kind == "json":
        problem = "unsupported" if any(m in error for m in _UNSUPPORTED_MARKERS) else "invalid"
        return f"{problem} JSON schema: {detail}"
    return f"invalid {'choices' if kind == 'choices' else 'regex'} {text[:80]!r}: {detail}"
