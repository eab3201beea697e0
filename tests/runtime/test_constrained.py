"""Constrained decoding on the real engine: validity under sampling, jump-forward, bad input.

The grammar package's own tests (test_grammar*.py) walk grammars with random tokens; these
run the default model through `Engine.generate(regex=... | json_schema=... | choices=...)`.
Each case submits its 100 samples at once so the engine batches them (keep this file fast).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest

from lmnb.runtime import Engine, GenerateResult
from lmnb.runtime.grammar import regex_for_dtype
from tests.conftest import assert_slots_accounted, wait_idle

NUM_SAMPLES = 100
OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
REGEX_IPV4 = rf"({OCTET}\.){{3}}{OCTET}"
REGEX_EMAIL = r"[a-z0-9][a-z0-9._]{0,11}@[a-z0-9]{1,10}\.(com|org|net|io)"
COLORS = ["red", "green", "blue", "dark purple", "light sea green"]

# Nested object + array + enum + integer bounds, kept small (each sample costs forwards);
# every string is bounded so the longest document is known and max_new_tokens can cover it.
CHARACTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Z][a-z]{1,7}$"},
        "class": {"enum": ["warrior", "mage", "rogue"]},
        "stats": {
            "type": "object",
            "properties": {"hp": {"type": "integer", "minimum": 10, "maximum": 99}},
            "required": ["hp"],
            "additionalProperties": False,
        },
        "items": {"type": "array", "items": {"enum": ["sword", "bow", "potion"]},
                  "minItems": 1, "maxItems": 2},
    },
    "required": ["name", "class", "stats", "items"],
    "additionalProperties": False,
}
# The longest valid document (JSON as the engine writes it: json.dumps' separators).
CHARACTER_MAX = {"name": "Xxxxxxxx", "class": "warrior", "stats": {"hp": 99},
                 "items": ["potion", "potion"]}


@dataclass(frozen=True)
class Case:
    question: str  # asked as a chat user turn: the answer is short, then EOS
    constraint: dict[str, Any]  # the generate() keyword: regex, json_schema or choices
    longest: int  # bytes in the longest text the constraint allows
    check: Callable[[str], object]  # raises (or returns False) on an invalid text

    @property
    def max_new_tokens(self) -> int:
        # Every token the grammar allows decodes to at least one byte, so `longest` tokens
        # always suffice; the slack is for nothing but clarity.
        return self.longest + 2


def _matches(regex: str, parse: Callable[[str], object] = str) -> Callable[[str], bool]:
    """fullmatch, and the text parses with `parse` (which raises ValueError if not)."""
    return lambda text: re.fullmatch(regex, text) is not None and parse(text) is not None


INT, FLOAT = regex_for_dtype(int), regex_for_dtype(float)
CASES: dict[str, Case] = {
    "ipv4": Case("What is the IP address of Google's public DNS server?",
                 {"regex": REGEX_IPV4}, 15, _matches(REGEX_IPV4, ipaddress.IPv4Address)),
    "email": Case("Write the e-mail address of a customer support desk.",
                  {"regex": REGEX_EMAIL}, 12 + 1 + 10 + 4, _matches(REGEX_EMAIL)),
    "int": Case("How many legs does a spider have? Answer with a number.",
                {"regex": INT}, 19, _matches(INT, int)),
    "float": Case("What is the value of pi? Answer with a number.",
                  {"regex": FLOAT}, 1 + 16 + 1 + 15, _matches(FLOAT, float)),
    "json": Case("Describe a fantasy game character as JSON: name, class, stats, items.",
                 {"json_schema": CHARACTER_SCHEMA}, len(json.dumps(CHARACTER_MAX)),
                 lambda text: jsonschema.validate(json.loads(text), CHARACTER_SCHEMA) or True),
    "choices": Case("What is your favourite colour? Answer in one word.",
                    {"choices": COLORS}, max(len(c) for c in COLORS), COLORS.__contains__),
}


def chat(engine: Engine, question: str) -> str:
    return engine.tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                                add_generation_prompt=True)


def _check(case: Case, text: str) -> bool:
    try:
        return bool(case.check(text))
    except (ValueError, jsonschema.ValidationError):
        return False


@pytest.fixture(scope="module")
def samples(engine: Engine) -> dict[str, list[GenerateResult]]:
    """NUM_SAMPLES results per case at temperature 1.0 (seeds 0..99), all submitted at once."""
    handles = {
        name: [engine.generate(chat(engine, case.question), temperature=1.0, seed=seed,
                               max_new_tokens=case.max_new_tokens, **case.constraint)
               for seed in range(NUM_SAMPLES)]
        for name, case in CASES.items()
    }
    return {name: [h.result(timeout=600) for h in hs] for name, hs in handles.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_sampled_outputs_are_valid(samples: dict[str, list[GenerateResult]], name: str) -> None:
    case, results = CASES[name], samples[name]
    assert len(results) == NUM_SAMPLES
    # A sample cut by max_new_tokens is reported as such, never as invalid.
    cut = [(seed, r.text) for seed, r in enumerate(results) if r.finish_reason == "length"]
    invalid = [(seed, r.text) for seed, r in enumerate(results)
               if r.finish_reason != "length" and not _check(case, r.text)]
    assert not invalid, f"{name}: outputs that do not match the constraint: {invalid[:5]}"
    assert not cut, (f"{name}: {len(cut)} samples ran out of max_new_tokens="
                     f"{case.max_new_tokens} (a test sizing bug): {cut[:5]}")
    assert all(r.finish_reason == "stop" for r in results)
    assert all(r.completion_tokens <= case.max_new_tokens for r in results)
    assert len({r.text for r in results}) > 1, f"{name}: temperature 1.0 gave one output"


def test_sampled_json_uses_jump_forward(samples: dict[str, list[GenerateResult]]) -> None:
    for r in samples["json"]:
        assert r.forced_tokens > 0 and r.jump_forward_steps > 0
        assert r.decode_steps + r.forced_tokens >= r.completion_tokens


# ---- jump-forward changes the number of forwards, not the output ----------------------------

GREEDY_PROMPTS = [
    "Describe a fantasy game character as a JSON object.\n",
    "Invent a hero for a role-playing game and write them as JSON: ",
    "JSON for a villain:",
]


def test_greedy_jump_forward_equals_plain_decoding(engine: Engine) -> None:
    wait_idle(engine)
    before = engine.stats()
    handles = {jf: [engine.generate(p, json_schema=CHARACTER_SCHEMA, jump_forward=jf,
                                    max_new_tokens=CASES["json"].max_new_tokens)
                    for p in GREEDY_PROMPTS]
               for jf in (True, False)}
    with_jf = [h.result(timeout=300) for h in handles[True]]
    without = [h.result(timeout=300) for h in handles[False]]
    for on, off in zip(with_jf, without):
        assert on.text == off.text
        assert on.output_ids == off.output_ids  # the forced tokens are the model's own split
        assert on.finish_reason == off.finish_reason == "stop"
        jsonschema.validate(json.loads(on.text), CHARACTER_SCHEMA)
        assert on.forced_tokens > 0 and on.jump_forward_steps > 0
        assert off.forced_tokens == 0 and off.jump_forward_steps == 0
        assert len(on.forced_positions) == on.forced_tokens and not off.forced_positions
        assert on.forced_positions == sorted(set(on.forced_positions))
        assert on.forced_positions[-1] < on.completion_tokens
        assert on.decode_steps < off.decode_steps
        assert on.decode_steps + on.forced_tokens == off.decode_steps
    wait_idle(engine)
    after = engine.stats()
    assert after["forced_tokens"] - before["forced_tokens"] == sum(
        r.forced_tokens for r in with_jf)
    assert after["jump_forward_steps"] - before["jump_forward_steps"] == sum(
        r.jump_forward_steps for r in with_jf)


# ---- running out of tokens mid-structure ----------------------------------------------------


@pytest.mark.parametrize("jump_forward", [True, False])
def test_max_new_tokens_mid_structure_ends_with_length(engine: Engine,
                                                       jump_forward: bool) -> None:
    # 1..3 end inside the forced `{"name": "` (the cut forced run at submission); 12 and 20
    # end in later keys and values, where a forced run may be cut by the room left.
    budgets = [1, 2, 3, 12, 20]
    handles = [engine.generate(GREEDY_PROMPTS[0], json_schema=CHARACTER_SCHEMA,
                               max_new_tokens=n, jump_forward=jump_forward)
               for n in budgets]
    for n, handle in zip(budgets, handles):
        r = handle.result(timeout=300)
        assert r.finish_reason == "length", (n, r.text)
        assert r.completion_tokens == len(r.output_ids) == n, (n, r.text)
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.text)
        assert r.text.startswith('{"name": "'[: len(r.text)])
    wait_idle(engine)
    assert_slots_accounted(engine)


# ---- bad input ------------------------------------------------------------------------------

BAD_INPUT = [
    ({"regex": "a(b"}, r"invalid regex 'a\(b': unclosed group"),
    ({"regex": "[z-a]"}, r"invalid regex '\[z-a\]'"),
    ({"json_schema": '{"type": "objec"}'}, r"invalid JSON schema: .*objec"),
    ({"json_schema": "{not json"}, r"invalid JSON schema: not valid JSON"),
    ({"json_schema": {"type": "object", "properties": {"a": {"type": "string"}},
                      "not": {"required": ["a"]}}},
     r"unsupported JSON schema: .*not"),
    ({"choices": []}, r"choices is empty"),
]


@pytest.mark.parametrize(("constraint", "message"), BAD_INPUT,
                         ids=["regex", "regex-range", "schema", "schema-text", "schema-not",
                              "choices"])
def test_bad_constraint_fails_at_submit(engine: Engine, constraint: dict[str, Any],
                                        message: str) -> None:
    wait_idle(engine)
    num_requests = engine.stats()["num_requests"]
    running = engine.generate("Count: one, two,", max_new_tokens=8)  # in flight meanwhile
    with pytest.raises(ValueError, match=message):
        engine.generate("Pick a colour: ", max_new_tokens=8, **constraint)
    follow_up = engine.generate("Pick a colour: ", choices=COLORS, max_new_tokens=8)
    assert follow_up.result(timeout=120).text in COLORS
    assert running.result(timeout=120).completion_tokens > 0
    wait_idle(engine)
    assert engine.stats()["num_requests"] == num_requests + 2  # the bad one never entered
    assert_slots_accounted(engine)
