"""The primitives as IR: construction, `+`, roles, SGLang argument names (no model needed)."""

from __future__ import annotations

import dataclasses

import pytest

import lmnb as lm
from lmnb.lang.ir import ExprList, Gen, RoleBegin, RoleEnd, Select, Text, flatten
from lmnb.lang.sampling import cut_number_end, regex_for_dtype, sampling_overrides


def test_plus_builds_flat_expression_lists():
    expr = "Q: " + lm.gen("a", max_tokens=3) + "\n" + ("x" + lm.select("b", ["1", "2"]))
    leaves = list(flatten(expr))
    assert [type(x) for x in leaves] == [Text, Gen, Text, Text, Select]
    assert isinstance(expr, ExprList)
    with pytest.raises(TypeError, match="str or lmnb expressions"):
        "x" + lm.gen() + 3


def test_gen_keeps_only_the_arguments_given_under_runtime_names():
    node = lm.gen("answer", 16, stop="\n", return_logprob=True, top_k=-1)
    assert dict(node.overrides) == {
        "max_new_tokens": 16,
        "stop": "\n",
        "return_logprobs": True,
        "top_k": 0,
    }
    assert dataclasses.is_dataclass(node) and node.name == "answer"
    with pytest.raises(dataclasses.FrozenInstanceError):
        node.name = "other"


def test_overrides_merge_over_run_defaults_field_by_field():
    from lmnb.runtime.params import SamplingParams

    defaults = SamplingParams().merged(**sampling_overrides(temperature=0.7, max_new_tokens=9))
    params = defaults.merged(**lm.gen(max_tokens=3, stop=".").overrides)
    assert (params.temperature, params.max_new_tokens, params.stop) == (0.7, 3, (".",))


def test_gen_with_choices_is_select_and_dtype_is_a_regex():
    node = lm.gen("x", choices=["a", "b"], choices_method="greedy_token_selection")
    assert isinstance(node, Select) and node.method is lm.greedy_token_selection
    typed = lm.gen_int("n")
    assert typed.dtype is int and typed.overrides["regex"].startswith(regex_for_dtype(int))
    assert lm.gen_string("s").overrides["regex"] == regex_for_dtype(str)
    assert lm.gen("b", dtype="bool").dtype is bool
    with pytest.raises(ValueError, match="either dtype or regex"):
        lm.gen(dtype=int, regex="[0-9]")
    with pytest.raises(ValueError, match="dtype must be one of"):
        lm.gen(dtype=list)


def test_number_gens_lose_their_end_character():
    assert cut_number_end(int, "24,") == "24"
    assert cut_number_end(int, "24") == "24"
    assert cut_number_end(float, "3.14\n") == "3.14"
    assert cut_number_end(str, '"a",') == '"a",'


def test_roles():
    assert lm.user("hi") == ExprList((RoleBegin("user"), Text("hi"), RoleEnd("user")))
    assert lm.system() == ExprList((RoleBegin("system"), RoleEnd("system")))
    assert lm.assistant_begin() == RoleBegin("assistant")
    assert lm.assistant_end() == RoleEnd("assistant")


def test_select_needs_choices():
    with pytest.raises(ValueError):
        lm.select("x", [])
    with pytest.raises(ValueError, match="unknown choices_method"):
        lm.select("x", ["a"], choices_method="best")


def test_function_decorator_forms():
    def body(s, question, shots=2):
        s += question

    program = lm.function(body)
    assert program.arg_names == ["question", "shots"] and program.name == "body"
    assert lm.function(num_api_spec_tokens=64)(body).num_api_spec_tokens == 64
