"""Failures surface on state access and from run() at the program's own line; the engine lives.

The interpreter's error handling runs on a scripted backend; the engine's refusals on the real one.
"""

from __future__ import annotations

import inspect

import pytest

import lmnb as lm
from lmnb.testing import ScriptedBackend

pytestmark = pytest.mark.usefixtures("scripted")


def line_of(program: lm.Function, marker: str) -> int:
    lines, start = inspect.getsourcelines(program.func)
    return start + next(i for i, line in enumerate(lines) if marker in line)


@lm.function
def body_raises(s, divisor):
    s += "The answer is"
    s += lm.gen("answer", max_tokens=2)
    s += str(1 / divisor)  # <- raises


def test_exception_in_the_body():
    with pytest.raises(lm.ProgramError) as info:
        body_raises.run(divisor=0)
    error = info.value
    assert isinstance(error.__cause__, ZeroDivisionError)
    assert error.site.lineno == line_of(body_raises, "<- raises")
    assert f"test_errors.py:{error.site.lineno}" in str(error)
    assert "s += str(1 / divisor)" in str(error)


def test_a_failed_batch_item_raises_on_access_and_the_others_run():
    states = body_raises.run_batch([{"divisor": 1}, {"divisor": 0}, {"divisor": 2}])
    assert states[0].text().endswith("1.0") and states[2].text().endswith("0.5")
    with pytest.raises(lm.ProgramError, match="ZeroDivisionError"):
        states[1].text()
    with pytest.raises(lm.ProgramError):
        states[1]["missing"]
    assert isinstance(states[1].error(), lm.ProgramError)


@lm.function
def reads_missing(s):
    s += "Hi" + lm.gen("greeting", max_tokens=2)
    s += s["greting"]  # <- typo


def test_missing_variable():
    with pytest.raises(lm.MissingVariableError) as info:
        reads_missing.run()
    assert isinstance(info.value, KeyError)
    assert info.value.site.lineno == line_of(reads_missing, "<- typo")
    assert "'greting' is never set; did you mean 'greeting'?" in str(info.value)
    assert "(the state's variables: greeting)" in str(info.value)
    assert 'KeyError: "' not in str(info.value)  # the message, not a KeyError's repr of it


def test_missing_variable_after_the_run():
    @lm.function
    def prog(s):
        s += "Hi"

    state = prog.run()
    with pytest.raises(lm.MissingVariableError, match="the state has none") as info:
        state["nothing"]
    assert "did you mean" not in str(info.value)


@lm.function
def nested_roles(s):
    with s.user():
        s += "Hello"
        s += lm.assistant("Hi")  # <- nested


def test_nested_roles():
    with pytest.raises(lm.ProgramError) as info:
        nested_roles.run()
    assert isinstance(info.value.__cause__, lm.RoleError)
    assert info.value.site.lineno == line_of(nested_roles, "<- nested")


@lm.function
def too_long(s):
    s += "word " * 9000
    s += lm.gen("answer", max_tokens=2)  # <- the engine refuses


def test_backend_failure_surfaces_and_the_engine_keeps_running(runtime):
    state = too_long.run(stream=True, backend=runtime)
    with pytest.raises(lm.ProgramError) as info:
        state["answer"]
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.site.lineno == line_of(too_long, "<- the engine refuses")
    with pytest.raises(lm.ProgramError):
        too_long.run(backend=runtime)

    @lm.function
    def fine(s):
        s += "The capital of France is" + lm.gen("city", max_tokens=1)

    assert fine.run(backend=runtime)["city"] == " Paris"


class FailingBackend(ScriptedBackend):
    """Fails every request on its way to the model."""

    def generate(self, prompt, params):
        raise ConnectionError("backend went away")


def test_failing_backend_surfaces_on_state_access():
    backend = FailingBackend()
    state = reads_missing.run(stream=True, backend=backend)
    with pytest.raises(lm.ProgramError, match="backend went away"):
        state.text()
    with pytest.raises(lm.ProgramError, match="backend went away"):
        list(state.text_iter())


@lm.function
def child_fails(s):
    s += "Options:"
    forks = s.fork(2)
    forks[0] += lm.gen("x", max_tokens=1)
    forks[1] += lm.gen("x", max_tokens=1, temperature=-1.0)  # <- bad parameter
    forks.join()
    s += " done"


def test_failure_in_a_fork_child_surfaces_in_the_parent():
    with pytest.raises(lm.ProgramError) as info:
        child_fails.run()
    assert "temperature must be >= 0" in str(info.value)
    assert info.value.site.lineno == line_of(child_fails, "<- bad parameter")


def test_bad_run_defaults_and_unsupported_arguments_raise_at_once():
    with pytest.raises(ValueError, match="temperature"):
        reads_missing.run(temperature=-1)
    with pytest.raises(TypeError, match="unknown sampling parameter"):
        reads_missing.run(not_a_parameter=1)
    with pytest.raises(NotImplementedError, match="frequency_penalty"):
        lm.gen("x", frequency_penalty=0.5)


class FailingCommit(ScriptedBackend):
    """Fails the prefill a fork makes of its shared prefix."""

    def commit(self, prompt, track=None):
        raise ConnectionError("prefill refused")


def test_a_failed_fork_fails_its_children_and_never_hangs():
    @lm.function
    def forked(s):
        s += "Two ideas:"
        forks = s.fork(2)
        for f in forks:
            inner = f.fork(2)  # nested: grandchildren wait on a fork that never runs
            for g in inner:
                g += lm.gen("idea", max_tokens=2)
            inner.join()
        forks.join()

    with pytest.raises(lm.ProgramError, match="prefill refused"):
        forked.run(backend=FailingCommit())
    with pytest.warns(UserWarning, match="constant prefix failed"):
        states = forked.run_batch([{}, {}], backend=FailingCommit())  # returns: nothing hangs
    assert all("prefill refused" in str(st.error()) for st in states)
