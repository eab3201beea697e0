"""SGLang programs run unchanged: the module paths, names, shapes and semantics they rely on.

On a scripted backend where the model is not the subject (`scripted`); on the default model
(`runtime`) where what a user sees depends on it (the shape of real logprobs, `gen_string`).

Aliasing: a user writes `sys.modules["sglang"] = lmnb` (after `import lmnb`) and nothing else;
`sglang.lang.ir`, `sglang.global_config`, `sglang.lang.global_config` and every other
`sglang.<sub>` with an lmnb module `lmnb.<sub>` then resolve to lmnb's own modules (the import
hook in `lmnb.lang.sglang_alias`). To undo it, remove `sglang` and every `sglang.*` key from
`sys.modules` (the `sglang_alias` fixture does).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator

import pytest

import lmnb
import lmnb as sgl
from lmnb.testing import ScriptedBackend


@pytest.fixture
def sglang_alias() -> Iterator[None]:
    """`sys.modules["sglang"] = lmnb` for one test, undone after it."""
    assert "sglang" not in sys.modules
    sys.modules["sglang"] = lmnb
    try:
        yield
    finally:
        for name in [n for n in sys.modules if n == "sglang" or n.startswith("sglang.")]:
            del sys.modules[name]


# ---- 1. module paths and SGLang's regex constants ---------------------------------------------


def test_sglang_module_paths_resolve_to_lmnbs_own_modules(sglang_alias):
    from sglang.global_config import global_config
    from sglang.lang.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR

    import lmnb.lang.backend  # lmnb's own submodules are still themselves afterwards

    assert (REGEX_INT, REGEX_FLOAT, REGEX_BOOL, REGEX_STR) == (
        r"[-+]?[0-9]+[ \n]*", r"[-+]?[0-9]*\.?[0-9]+[ \n]*", r"(True|False)", r"\"[\w\d\s]*\"")
    assert sys.modules["sglang.lang.ir"] is sys.modules["lmnb.lang.ir"]
    assert lmnb.lang is sys.modules["lmnb.lang"] and lmnb.lang.ir.__spec__.name == "lmnb.lang.ir"
    assert lmnb.lang.backend.set_default_backend is sgl.set_default_backend
    assert global_config is sgl.global_config
    with pytest.raises(ModuleNotFoundError):
        import sglang.srt  # noqa: F401  (no lmnb module there)


def test_without_the_alias_the_hook_is_idle():
    from lmnb.lang.sglang_alias import SGLangAliasFinder

    assert SGLangAliasFinder().find_spec("sglang.lang.ir", None) is None


def test_sglang_regex_constants_constrain_a_gen(scripted):
    from lmnb.lang.ir import REGEX_INT

    scripted.script = "42 apples"

    @sgl.function
    def count(s):
        s += "How many? " + sgl.gen("n", regex=REGEX_INT, max_tokens=8)

    assert re.fullmatch(REGEX_INT, count.run()["n"])


# ---- 2. text_async_iter -----------------------------------------------------------------------


def test_text_async_iter_streams_as_text_iter_does(scripted):
    scripted.script = {"Q:": " one two three", "again:": " four five"}
    scripted.delay = 0.01

    @sgl.function
    def prog(s):
        s += "Q:" + sgl.gen("a", max_tokens=8)
        s += " again:" + sgl.gen("b", max_tokens=8)

    async def collect(state, **kwargs):
        return [piece async for piece in state.text_async_iter(**kwargs)]

    state = prog.run(stream=True)
    pieces = asyncio.run(collect(state))
    assert "".join(pieces) == state.text() == "Q: one two three again: four five"
    assert len(pieces) > 3  # chunk by chunk, not one piece at the end
    state = prog.run(stream=True)
    assert "".join(asyncio.run(collect(state, var_name="b"))) == " four five"
    with_meta = asyncio.run(collect(prog.run(stream=True), var_name="a", return_meta_data=True))
    assert "".join(text for text, _ in with_meta) == " one two three"
    assert with_meta[-1][1]["finish_reason"]["type"] == "stop"
    whole = asyncio.run(collect(prog.run(stream=True), return_meta_data=True))
    assert all(isinstance(piece, str) for piece in whole)  # pairs only for a variable


# ---- 3. global_config -------------------------------------------------------------------------


def test_global_config_default_backend_is_the_default_backend():
    backend = ScriptedBackend("hi")
    before = sgl.global_config.default_backend
    try:
        sgl.global_config.default_backend = backend
        assert sgl.get_default_backend() is backend
        sgl.set_default_backend(None)
        assert sgl.global_config.default_backend is None
        sgl.set_default_backend(backend)
        assert sgl.global_config.default_backend is backend
    finally:
        sgl.set_default_backend(before)


def test_precache_with_tracing_toggles_the_batch_prefill(scripted, monkeypatch):
    @sgl.function
    def prog(s, q):
        s += "A long shared instruction for every question. "
        s += q + sgl.gen("a", max_tokens=2)

    def prefills() -> int:  # prefill requests: no output, no prompt logprobs
        return sum(r.params.max_new_tokens == 0 and r.params.logprob_start_len is None
                   for r in scripted.requests)

    prog.run_batch([{"q": "x"}, {"q": "y"}])
    assert prefills() == 1
    monkeypatch.setattr(sgl.global_config, "enable_precache_with_tracing", False)
    prog.run_batch([{"q": "x"}, {"q": "y"}])
    assert prefills() == 1


def test_global_config_no_ops_and_verbosity(scripted, monkeypatch, capsys):
    cfg = sgl.global_config
    assert cfg.enable_parallel_encoding and cfg.skip_special_tokens_in_output
    assert cfg.spaces_between_special_tokens_in_out and cfg.verbosity == 0
    monkeypatch.setattr(cfg, "enable_parallel_encoding", False)  # accepted, changes nothing
    scripted.script = " fine"

    @sgl.function
    def prog(s):
        s += "How are you?" + sgl.gen("a", max_tokens=3)

    prog.run()
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(cfg, "verbosity", 2)
    prog.run()
    assert capsys.readouterr().out == "How are you? fine\n"


# ---- 6. copy, bind, generator_style, use_thread -----------------------------------------------


def test_copy_is_a_fork_joined_on_exit(scripted):
    scripted.script = {"Tip:": " drink water", "Q:": " yes"}

    @sgl.function
    def prog(s):
        s += "Q:" + sgl.gen("answer", max_tokens=3)
        with s.copy() as c:
            assert isinstance(c, sgl.ProgramState) and c is not s
            c += " Tip:" + sgl.gen("tip", max_tokens=3)
        s += " done"

    state = prog.run()
    assert state.text() == "Q: yes done"  # the copy's text stays in the copy
    assert state["tip"] == [" drink water"] and state["answer"] == " yes"


def test_bind_fixes_arguments_and_returns_a_new_function(scripted):
    scripted.script = lambda prompt: " " + prompt.split()[-1].upper()

    @sgl.function
    def shout(s, word, suffix):
        s += word + sgl.gen("loud", max_tokens=2) + suffix

    bound = shout.bind(suffix="!")
    assert isinstance(bound, sgl.Function) and bound is not shout and shout.bind_arguments == {}
    assert bound.run(word="hey").text() == "hey HEY!"
    assert [s.text() for s in bound.run_batch([{"word": "a"}, {"word": "b"}])] == [
        "a A!", "b B!"]
    assert bound.bind(word="yo").run().text() == "yo YO!"
    assert "!" in bound.trace().to_dot()  # bound values are known while tracing
    with pytest.raises(TypeError, match="nope"):
        shout.bind(nope=1)


def test_run_batch_generator_style_yields_in_input_order_as_they_finish(scripted):
    scripted.delay = 0.01
    scripted.script = lambda prompt: " x" * (int(prompt.split()[-1]))

    @sgl.function
    def prog(s, n):
        s += f"count {n}" + sgl.gen("out", max_tokens=12)

    sizes = [10, 1, 5]
    batch = prog.run_batch([{"n": n} for n in sizes], generator_style=True)
    assert not isinstance(batch, list) and not scripted.requests  # starts at the first next()
    first = next(batch)
    assert first.finished() and first["out"] == " x" * 10
    rest = list(batch)
    assert [s["out"] for s in rest] == [" x" * 1, " x" * 5]
    assert list(prog.run_batch([], generator_style=True)) == []


def test_use_thread_false_runs_each_append_before_it_returns(scripted):
    scripted.delay = 0.02
    scripted.script = " a b c d"
    seen: list[bool] = []

    @sgl.function
    def prog(s):
        s += "Go:" + sgl.gen("x", max_tokens=4)
        seen.append("x" in s._ex.variables)  # no run-ahead: the gen has run already

    prog.run(use_thread=False)
    prog.run(use_thread=True)
    assert seen == [True, False]


# ---- 7. exceptions keep their class -----------------------------------------------------------


class QuotaError(ValueError):
    def __init__(self, left: int) -> None:
        super().__init__(f"{left} left")
        self.left = left


@sgl.function
def raises(s, exc):
    s += "Hi" + sgl.gen("a", max_tokens=2)
    raise exc  # <- here


@pytest.mark.usefixtures("scripted")
@pytest.mark.parametrize("exc", [ValueError("bad"), KeyError("k"), QuotaError(3),
                                 FileNotFoundError(2, "gone", "f.txt"), TimeoutError("slow"),
                                 NotImplementedError("later")], ids=lambda e: type(e).__name__)
def test_a_body_exception_is_caught_by_its_own_class(exc):
    with pytest.raises(type(exc)) as info:
        raises.run(exc=exc)
    error = info.value
    assert isinstance(error, sgl.ProgramError) and error.__cause__ is exc and error.cause is exc
    assert "raise exc  # <- here" in str(error) and type(exc).__name__ in str(error)
    assert error.site is not None and error.site.function == "raises"
    assert type(error) is type(sgl.ProgramError("p", None, exc))  # one class per type
    if isinstance(exc, QuotaError):
        assert error.left == 3
    if isinstance(exc, FileNotFoundError):
        assert (error.errno, error.filename) == (2, "f.txt")


@pytest.mark.usefixtures("scripted")
def test_an_exception_in_an_op_and_one_that_cannot_be_mixed_chain():
    @sgl.function
    def bad_regex(s):
        s += "Hi" + sgl.gen("a", regex="[0-9]+", max_tokens=2)  # the script can't match

    with pytest.raises(ValueError, match="no prefix"):
        bad_regex.run()
    with pytest.raises(sgl.ProgramError) as info:  # StopIteration would break generators
        raises.run(exc=StopIteration(1))
    assert type(info.value) is sgl.ProgramError and isinstance(info.value.cause, StopIteration)
    state = raises.run(exc=ValueError("x"), stream=True)
    with pytest.raises(ValueError):
        list(state.text_iter())


def test_a_batch_items_error_and_a_streamed_one_keep_their_class(scripted):
    states = raises.run_batch([{"exc": ValueError("a")}, {"exc": KeyError("b")}])
    with pytest.raises(ValueError):
        states[0].sync()
    with pytest.raises(KeyError):
        states[1].text()
    assert isinstance(states[0].error(), sgl.ProgramError)


# ---- 4. get_meta_info in SGLang's shape -------------------------------------------------------


def test_gen_meta_finish_reasons(scripted):
    scripted.script = {"A:": " one two. three", "B:": " one two three four five", "C:": " hi"}

    @sgl.function
    def prog(s):
        s += "A:" + sgl.gen("stop_str", max_tokens=8, stop=".")
        s += " B:" + sgl.gen("length", max_tokens=2)
        s += " C:" + sgl.gen("eos", max_tokens=8)

    state = prog.run()
    assert state.get_meta_info("stop_str")["finish_reason"] == {"type": "stop", "matched": "."}
    assert state.get_meta_info("length")["finish_reason"] == {
        "type": "length", "matched": None, "length": 2}
    eos = scripted.tokenizer.eos_token_id
    assert state.get_meta_info("eos")["finish_reason"] == {"type": "stop", "matched": eos}


def test_gen_meta_logprob_triples_and_lmnb_extras(scripted):
    scripted.script = " four five"

    @sgl.function
    def prog(s):
        s += "One two three"
        s += sgl.gen("n", max_tokens=2, return_logprob=True, logprob_start_len=1)

    state = prog.run()
    meta = state.get_meta_info("n")
    tok = scripted.tokenizer
    prompt_ids = tok.encode("One two three")
    assert [(i, t) for _, i, t in meta["input_token_logprobs"]] == [
        (i, tok.decode([i])) for i in prompt_ids[1:]]
    assert all(isinstance(lp, float) for lp, _, _ in meta["input_token_logprobs"])
    out = meta["output_token_logprobs"]
    assert [i for _, i, _ in out] == state.token_ids()[len(prompt_ids):]
    assert "".join(t for _, _, t in out) == state["n"] == " four five"
    assert {"prompt_tokens", "completion_tokens", "cached_tokens"} <= set(meta)
    assert {"forced_positions", "jump_forward_steps", "decode_steps"} <= set(meta)  # extras
    assert "prompt_logprobs" not in meta and "output_logprobs" not in meta  # the raw floats
    plain = sgl.function(lambda s: s.__iadd__("Hi" + sgl.gen("x", max_tokens=1))).run()
    assert "output_token_logprobs" not in plain.get_meta_info("x")  # only when asked


def test_select_meta_per_choice_triples(scripted):
    scripted.script = " blue sky"

    @sgl.function
    def prog(s):
        s += "Color:" + sgl.select("c", [" red", " blue sky"],
                                   choices_method=sgl.unconditional_likelihood_normalized)

    meta = prog.run().get_meta_info("c")
    tok = scripted.tokenizer
    assert meta["input_token_ids"] == [tok.encode(" red"), tok.encode(" blue sky")]
    for lps, ids, choice in zip(meta["input_token_logprobs"], meta["input_token_ids"],
                                [" red", " blue sky"], strict=True):
        assert [i for _, i, _ in lps] == ids and "".join(t for _, _, t in lps) == choice
        assert all(isinstance(lp, float) for lp, _, _ in lps)
    assert meta["output_token_logprobs"] == [[], []]
    assert [lps[0][0] for lps in meta["unconditional_token_logprobs"]] == [None, None]
    assert len(meta["normalized_prompt_logprobs"]) == len(meta["scores"]) == 2


def test_meta_already_in_sglangs_shape_passes_through():
    from lmnb.lang import meta

    shaped = {"input_token_logprobs": [[(-0.5, 7, "a")]], "finish_reason": {"type": "stop"}}
    assert meta.select_meta(shaped, None) == shaped
    assert meta.finish_reason({"type": "abort", "message": "x"}) == {
        "type": "abort", "message": "x"}
    assert meta.finish_reason("abort")["type"] == "abort"


def test_real_logprobs_line_up_with_the_prompt_and_output(runtime):
    @sgl.function
    def prog(s):
        s += "The capital of France is"
        s += sgl.gen("city", max_tokens=3, return_logprob=True, logprob_start_len=0)

    state = prog.run(temperature=0)
    meta = state.get_meta_info("city")
    inputs, outputs = meta["input_token_logprobs"], meta["output_token_logprobs"]
    ids = state.token_ids()
    assert len(inputs) == meta["prompt_tokens"] and inputs[0][0] is None  # as SGLang's
    assert [i for _, i, _ in inputs] == ids[: meta["prompt_tokens"]]
    assert [i for _, i, _ in outputs] == ids[meta["prompt_tokens"]:]
    assert "".join(t for _, _, t in inputs) == "The capital of France is"
    assert all(lp <= 0 for lp, _, _ in inputs[1:] + outputs)


# ---- 5. gen_string is as strict as SGLang's ---------------------------------------------------


def test_gen_string_regex_is_sglangs_class_and_never_empty(scripted):
    from lmnb.lang.ir import REGEX_STR
    from lmnb.lang.sampling import regex_for_dtype

    regex = regex_for_dtype(str)
    assert regex == REGEX_STR.replace("*", "+")  # SGLang's character class, one or more
    for good in ('"Paris"', '"New York 2"', '"Été"'):
        assert re.fullmatch(regex, good)
    for bad in ('""', '",#Paris,#Paris"', '"a"b"', '"x\\"'):
        assert not re.fullmatch(regex, bad)


def test_gen_string_gives_a_short_quoted_string_in_json(runtime):
    @sgl.function
    def capital(s):
        s += sgl.user("What is the capital of France? Answer in JSON.")
        s += sgl.assistant('{"capital": ' + sgl.gen_string("c", max_tokens=16) + "}")

    state = capital.run(temperature=0)
    assert state["c"] == '"Paris"'
    assert json.loads(state.messages()[-1]["content"]) == {"capital": "Paris"}
    assert state.get_meta_info("c")["finish_reason"]["type"] == "stop"


def test_copy_traces_like_a_fork():
    @sgl.function
    def prog(s, q):
        s += "Shared. "
        with s.copy() as c:
            c += q + sgl.gen("a", max_tokens=2)
        s += "After."

    graph = prog.trace()
    assert graph.stopped is None
    assert [n.kind for n in graph.nodes].count("fork") == 1
    assert [n.kind for n in graph.nodes].count("join") == 1
