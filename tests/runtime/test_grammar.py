"""The grammar layer against the default model's real tokenizer (no forward runs).

Random walks drive `GrammarState` exactly as the engine does (mask -> pick an allowed token ->
accept; forced ids whenever there are some), so every output must match its constraint.
"""

from __future__ import annotations

import json
import random
import re
import threading
from collections.abc import Callable
from typing import Any

import jsonschema
import numpy as np
import pytest
import torch

from lmnb.runtime.grammar import (
    CompiledGrammar,
    GrammarCompiler,
    GrammarError,
    allocate_bitmask,
    apply_bitmask_,
    regex_for_choices,
    regex_for_dtype,
)
from lmnb.runtime.params import SamplingParams

VOCAB_SIZE = 49152
EOS_ID = 2

OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
IPV4 = rf"({OCTET}\.){{3}}{OCTET}"
EMAIL = r"[a-z0-9._]{1,12}@[a-z0-9]{1,10}\.(com|org|net)"
CHARACTER = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 10},
        "level": {"type": "integer", "minimum": 1, "maximum": 99},
        "class": {"enum": ["warrior", "mage", "archer"]},
        "inventory": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "item": {"type": "string", "maxLength": 8},
                    "qty": {"type": "integer", "minimum": 0, "maximum": 9},
                },
                "required": ["item", "qty"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 3,
        },
    },
    "required": ["name", "level", "class", "inventory"],
    "additionalProperties": False,
}
COLORS = ("red", "green", "blue", "dark red", "redder")


@pytest.fixture(scope="session")
def tokenizer() -> Any:  # a transformers tokenizer
    from transformers import AutoTokenizer

    from lmnb.runtime import loader

    # the folder the runtime loads the default model from (converted once from its GGUF)
    return AutoTokenizer.from_pretrained(str(loader.resolve(None).folder))


@pytest.fixture(scope="session")
def compiler(tokenizer: Any) -> GrammarCompiler:
    return GrammarCompiler(tokenizer, VOCAB_SIZE)


def encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def walk(compiled: CompiledGrammar, tokenizer: Any, rng: random.Random,
         stop_p: float = 0.3, max_steps: int = 400) -> tuple[str, int]:
    """One random path through the grammar, driven the way the engine drives it.

    Returns the decoded text and the number of forced tokens. Checks on the way: the mask
    allows EOS exactly when `can_end()`, and forced ids are the tokenizer's own encoding.
    """
    state = compiled.new_state()
    mask = torch.from_numpy(np.zeros(VOCAB_SIZE, dtype=np.bool_))
    ids: list[int] = []
    num_forced = 0
    for _ in range(max_steps):
        if state.is_finished():
            return tokenizer.decode(ids), num_forced
        forced = state.forced_ids()
        if forced:
            text = tokenizer.decode(forced)
            if "\ufffd" not in text:  # not the tail of a character the walk split into bytes
                assert encode(tokenizer, text) == forced
            state.accept_forced(forced)
            ids += forced
            num_forced += len(forced)
            continue
        state.fill_mask(mask)
        assert bool(mask[EOS_ID]) == state.can_end()
        mask[EOS_ID] = False
        allowed = np.flatnonzero(mask.numpy())
        if state.can_end() and (len(allowed) == 0 or rng.random() < stop_p):
            state.accept(EOS_ID)
            assert state.is_finished()
            return tokenizer.decode(ids), num_forced
        assert len(allowed), f"dead end after {tokenizer.decode(ids)!r}"
        token = int(allowed[rng.randrange(len(allowed))])
        state.accept(token)
        ids.append(token)
    raise AssertionError(f"walk did not end in {max_steps} steps: {tokenizer.decode(ids)!r}")


def run_walks(compiled: CompiledGrammar, tokenizer: Any, check: Callable[[str], None],
              num: int = 100, seed: int = 0) -> int:
    rng = random.Random(seed)
    total_forced = 0
    for _ in range(num):
        text, num_forced = walk(compiled, tokenizer, rng)
        check(text)
        total_forced += num_forced
    return total_forced


def fullmatch(regex: str) -> Callable[[str], None]:
    def check(text: str) -> None:
        assert re.fullmatch(regex, text), f"{text!r} does not match {regex!r}"
    return check


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize(("params", "words"), [
    (SamplingParams(regex="a(b"), ["invalid regex", "a(b", "unclosed group"]),
    (SamplingParams(regex="[z-a]"), ["invalid regex", "range"]),
    (SamplingParams(regex=r"(a)\1"), ["invalid regex", "backreferences"]),
    (SamplingParams(json_schema='{"type": "objec"}'), ["invalid JSON schema", "objec"]),
    (SamplingParams(json_schema='{"type": "object",'), ["invalid JSON schema", "not valid JSON"]),
    (SamplingParams(json_schema="[1, 2]"), ["invalid JSON schema", "object"]),
    (SamplingParams(json_schema='{"type": "integer", "minimum": 5, "maximum": 1}'),
     ["invalid JSON schema", "minimum"]),
    (SamplingParams(json_schema='{"not": {"type": "string"}}'),
     ["unsupported JSON schema", "not"]),
    (SamplingParams(json_schema='{"if": {"type": "string"}, "then": {"maxLength": 3}}'),
     ["unsupported JSON schema", "if"]),
    (SamplingParams(choices=()), ["choices", "empty"]),
])
def test_bad_constraints_raise_naming_the_problem(compiler: GrammarCompiler,
                                                  params: SamplingParams,
                                                  words: list[str]) -> None:
    with pytest.raises(GrammarError) as info:
        compiler.compile(params)
    assert isinstance(info.value, ValueError)
    for word in words:
        assert word in str(info.value)


def test_unconstrained_compiles_to_none(compiler: GrammarCompiler) -> None:
    assert compiler.compile(SamplingParams()) is None


def test_a_rejected_token_raises(compiler: GrammarCompiler, tokenizer: Any) -> None:
    state = compiler.compile_regex("[0-9]+").new_state()
    with pytest.raises(GrammarError, match="rejected"):
        state.accept(encode(tokenizer, "x")[0])


# ---- random walks: every path is valid --------------------------------------------------------

@pytest.mark.parametrize(("name", "regex"), [
    ("ipv4", IPV4),
    ("email", EMAIL),
    ("int", regex_for_dtype(int)),
    ("float", regex_for_dtype(float)),
])
def test_regex_walks_fullmatch(compiler: GrammarCompiler, tokenizer: Any,
                               name: str, regex: str) -> None:
    compiled = compiler.compile(SamplingParams(regex=regex))
    num_forced = run_walks(compiled, tokenizer, fullmatch(regex))
    if name in ("ipv4", "email"):
        assert num_forced > 0  # dots after 3-digit octets, the TLD's tail


def test_dtype_walks_parse(compiler: GrammarCompiler, tokenizer: Any) -> None:
    run_walks(compiler.compile_regex(regex_for_dtype(int)), tokenizer, int, num=30, seed=1)
    run_walks(compiler.compile_regex(regex_for_dtype(float)), tokenizer, float, num=30, seed=2)
    bools = compiler.compile_regex(regex_for_dtype(bool))
    run_walks(bools, tokenizer, lambda text: {"True": True, "False": False}[text], num=10)
    assert re.fullmatch(regex_for_dtype(str), '"hello world"')
    assert regex_for_dtype("int") == regex_for_dtype(int)
    with pytest.raises(GrammarError, match="dtype"):
        regex_for_dtype(list)


def test_json_schema_walks_validate(compiler: GrammarCompiler, tokenizer: Any) -> None:
    compiled = compiler.compile(SamplingParams(json_schema=CHARACTER))

    def check(text: str) -> None:
        jsonschema.validate(json.loads(text), CHARACTER)

    num_forced = run_walks(compiled, tokenizer, check)
    assert num_forced > 100 * 4  # at least `{"name":` and the other keys, every time


def test_choice_walks_pick_one_choice(compiler: GrammarCompiler, tokenizer: Any) -> None:
    compiled = compiler.compile(SamplingParams(choices=COLORS))
    seen = set()

    def check(text: str) -> None:
        assert text in COLORS
        seen.add(text)

    run_walks(compiled, tokenizer, check)
    assert len(seen) >= 3


def test_choices_with_regex_syntax_are_literal(compiler: GrammarCompiler,
                                               tokenizer: Any) -> None:
    choices = ("a.b", "(x|y)", "[1-2]*", "c\\d", 'say "hi"\n', "e{2}", "$^", "ünï")
    regex = regex_for_choices(choices)
    assert all(re.fullmatch(regex, c) for c in choices)
    assert not re.fullmatch(regex, "axb")
    run_walks(compiler.compile_choices(choices), tokenizer, lambda t: choices.index(t), num=40)


# ---- jump-forward: forced ids are the tokenizer's own ------------------------------------------

def test_forced_ids_are_canonical_and_back_off(compiler: GrammarCompiler,
                                               tokenizer: Any) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    state = compiler.compile(SamplingParams(json_schema=json.dumps(schema))).new_state()
    forced = state.forced_ids()
    text = tokenizer.decode(forced)
    assert forced == encode(tokenizer, text)  # `{"`, `name`, `":` - never `{`, `"`, `name`
    assert text.startswith('{"name"')
    # The whole forced text is `{"name": "`; ` "` is held back because the tokenizer merges it
    # with what may follow (` ""` is one token), so the model chooses that token itself.
    assert '{"name": "'.startswith(text) and text != '{"name": "'
    assert encode(tokenizer, '{"name": ""}')[: len(forced)] == forced
    state.accept_forced(forced)
    assert state.forced_ids() == []


@pytest.mark.parametrize("document", [
    {"name": "Bob", "age": 7},
    {"city": "Paris", "tags": ["old", "big"], "ok": True},
])
def test_forced_ids_follow_the_canonical_encoding(compiler: GrammarCompiler,
                                                  tokenizer: Any, document: dict) -> None:
    """Feeding a document's own tokens, every forced run is exactly its next tokens."""
    properties = {
        "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
        "tags": {"type": "array", "items": {"enum": ["big", "old"]}}, "ok": {"type": "boolean"},
    }
    schema = {"type": "object", "properties": {k: properties[k] for k in document},
              "required": list(document), "additionalProperties": False}
    state = compiler.compile_json_schema(json.dumps(schema)).new_state()
    ids = encode(tokenizer, json.dumps(document))
    pos = num_forced = 0
    while pos < len(ids):
        forced = state.forced_ids()
        if forced:
            assert forced == ids[pos:pos + len(forced)]
            state.accept_forced(forced)
            pos += len(forced)
            num_forced += len(forced)
        else:
            state.accept(ids[pos])
            pos += 1
    assert state.can_end() and num_forced >= 6


# ---- masks, EOS, vocabulary padding -----------------------------------------------------------

def test_eos_only_where_the_grammar_accepts(compiler: GrammarCompiler,
                                            tokenizer: Any) -> None:
    state = compiler.compile_regex("[0-9]+").new_state()
    mask = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
    state.fill_mask(mask)
    assert not mask[EOS_ID] and not state.can_end()
    for token in encode(tokenizer, "12"):
        state.accept(token)
    state.fill_mask(mask)
    assert mask[EOS_ID] and state.can_end() and not state.is_finished()
    state.accept(EOS_ID)
    assert state.is_finished()


def test_a_closed_choice_finishes_without_eos(compiler: GrammarCompiler,
                                              tokenizer: Any) -> None:
    state = compiler.compile_choices(("yes", "no")).new_state()
    state.accept_forced(encode(tokenizer, "no"))
    assert state.is_finished() and state.can_end()


def test_batched_bitmask_matches_fill_mask(compiler: GrammarCompiler,
                                           tokenizer: Any) -> None:
    state = compiler.compile_regex(EMAIL).new_state()
    state.accept(encode(tokenizer, "ab")[0])
    mask = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
    state.fill_mask(mask)
    bitmask = allocate_bitmask(2, VOCAB_SIZE)  # row 1 stays unconstrained
    state.fill_bitmask(bitmask[0])
    logits = torch.zeros(2, VOCAB_SIZE)
    apply_bitmask_(logits, bitmask)
    assert torch.equal(torch.isfinite(logits[0]), mask)
    assert torch.isfinite(logits[1]).all()
    assert 0 < int(mask.sum()) < VOCAB_SIZE


def test_logits_wider_than_the_tokenizer(tokenizer: Any) -> None:
    wide = GrammarCompiler(tokenizer, VOCAB_SIZE + 40)
    state = wide.compile(SamplingParams(regex=".{1,5}")).new_state()
    mask = torch.zeros(VOCAB_SIZE + 40, dtype=torch.bool)
    state.fill_mask(mask)
    assert mask[:VOCAB_SIZE].any() and not mask[VOCAB_SIZE:].any()


# ---- the compile cache --------------------------------------------------------------------------

def test_compile_is_cached_by_kind_and_text(compiler: GrammarCompiler) -> None:
    first = compiler.compile(SamplingParams(regex=IPV4))
    assert compiler.compile(SamplingParams(regex=IPV4)) is first
    schema = json.dumps(CHARACTER)
    assert compiler.compile_json_schema(schema) is compiler.compile_json_schema(schema)
    choices = compiler.compile(SamplingParams(choices=("a", "b")))
    assert compiler.compile_choices(["a", "b"]) is choices
    assert compiler.compile_regex("(a|b)") is not compiler.compile_choices(["a", "b"])


def test_compile_is_thread_safe(compiler: GrammarCompiler) -> None:
    results: list[CompiledGrammar] = []
    regex = r"thread-safe-[0-9]{3}"

    def work() -> None:
        results.append(compiler.compile_regex(regex))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_states_are_independent(compiler: GrammarCompiler, tokenizer: Any) -> None:
    compiled = compiler.compile_regex("[0-9]+")
    a, b = compiled.new_state(), compiled.new_state()
    a.accept(encode(tokenizer, "7")[0])
    assert a.can_end() and not b.can_end()
