"""API speculative execution's matching, model-free: cutting a gen's value from a speculative
output as a call would (stop strings, max_tokens, the message's end), and the per-turn store."""

from __future__ import annotations

from lmnb.lang.backend.api_spec import (
    MISMATCH,
    PARAMS_DIFFER,
    RAN_OUT,
    Served,
    SpecOutput,
    SpecStore,
    serve,
)

GREEDY = (0.0, 1.0, 0, None)


def output(text: str, start: int = 0, tokens: list[str] | None = None,
           finished: bool = False) -> SpecOutput:
    """A speculative output; `tokens` split text[start:] (their ends become token_ends)."""
    ends, at = [], start
    for token in tokens or []:
        at += len(token)
        ends.append(at)
    assert tokens is None or at == len(text)
    return SpecOutput(text, start, tuple(ends) if tokens else None, finished, 50, GREEDY)


SPEC = output("Name: Ann\nJob: cook\nAge: 3", 5,
              [" Ann", "\n", "Job", ":", " cook", "\n", "Age", ":", " 3"])


def test_a_value_ends_at_its_stop_string():
    got = serve(SPEC, "Name:", ("\n",), 16, GREEDY)
    assert got == Served(" Ann", "stop", "\n", 1, 50)
    later = serve(SPEC, "Name: Ann\nJob:", ("\n",), 16, GREEDY)
    # a call there would have billed the first call's prompt and the 4 tokens before "Job:"'s end
    assert later == Served(" cook", "stop", "\n", 1, 54)


def test_max_tokens_cuts_before_a_late_stop():
    got = serve(SPEC, "Name:", ("\nAge",), 3, GREEDY)
    assert got == Served(" Ann\nJob", "length", None, 3, 50)
    # the stop string must be complete within max_tokens
    assert serve(SPEC, "Name:", ("\n",), 1, GREEDY).finish_reason == "length"


def test_the_output_running_out_or_ending():
    assert serve(SPEC, "Name: Ann\nJob: cook\nAge:", ("\n",), 16, GREEDY) == RAN_OUT
    ended = SpecOutput(SPEC.text, SPEC.start, SPEC.token_ends, True, 50, GREEDY)
    assert serve(ended, "Name: Ann\nJob: cook\nAge:", ("\n",), 16, GREEDY).text == " 3"


def test_mismatch_and_other_sampling():
    assert serve(SPEC, "Name: Ann\nHobby:", ("\n",), 16, GREEDY) == MISMATCH
    assert serve(SPEC, "", ("\n",), 16, GREEDY) == MISMATCH  # before the output's start
    assert serve(SPEC, "Name:", ("\n",), 16, (0.7, 1.0, 0, None)) == PARAMS_DIFFER


def test_without_token_boundaries_only_a_stop_or_the_end_closes_a_value():
    spec = output("Name: Ann\nJob: cook", 0)
    assert serve(spec, "Name:", ("\n",), 16, GREEDY).text == " Ann"
    assert serve(spec, "Name: Ann\nJob:", ("\n",), 16, GREEDY) == RAN_OUT


def test_store_keeps_one_turn_per_state():
    store = SpecStore(capacity=2)
    store.put((1, 1), SPEC)
    assert store.get((1, 1)) is SPEC and store.get((1, 2)) is None
    assert store.get((1, 1)) is None  # the later turn dropped it
    store.put((1, 3), SPEC)
    store.drop((1, 3))
    assert len(store) == 0
    for state in (1, 2, 3):
        store.put((state, 1), SPEC)
    assert len(store) == 2 and store.get((1, 1)) is None
