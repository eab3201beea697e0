"""What a failing cell shows, rendered by a real IPython shell: cells run through `run_cell`
with their history stored, so execution counts and `Cell In[N]` labels are IPython's own.

On a `ScriptedBackend` (the model is not the subject); the views a cell shows are checked
only for whether they appear.
"""

from __future__ import annotations

import _thread
import signal
import threading
import time

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

import lmnb as lm
import lmnb.magics
from lmnb.testing import ScriptedBackend, default_backend

TYPO = ('%%lmprogram --wait\n'
        'city = "Paris"\n'
        's += user(f"About {citty}")\n'
        's += assistant(gen("a", max_tokens=4))\n')


@pytest.fixture(scope="module")
def ip():
    shell = start_ipython() or get_ipython()  # None once another module has started it
    shell.run_line_magic("load_ext", "lmnb")
    shell.run_line_magic("colors", "nocolor")
    with default_backend(ScriptedBackend()):
        yield shell


@pytest.fixture
def debug_off(ip):
    magics = ip.magics_manager.registry["LmnbMagics"]
    magics.debug = False
    yield magics
    magics.debug = False


def run(ip, source: str) -> tuple[object, str, list]:
    """Run a cell as a kernel does; (result, everything printed, displayed outputs)."""
    with capture_output() as out:
        result = ip.run_cell(source, store_history=True)
    return result, out.stdout + out.stderr, out.outputs


def assert_short(text: str) -> None:
    """No lmnb frame, no wrapping ProgramError, no magic call, no chained traceback."""
    for noise in ("lmnb/", "ProgramError", "get_ipython()", "Cell In[0]", "The above exception",
                  "ipython-input", "ipykernel"):
        assert noise not in text, (noise, text)


def test_a_typo_ends_at_the_cells_line(ip, debug_off) -> None:
    run(ip, "x = 1")  # so the cell is not the first: its label must be its own number
    result, text, outputs = run(ip, TYPO)
    n = result.execution_count
    assert n > 1 and isinstance(result.error_in_exec, NameError)
    assert isinstance(result.error_in_exec, lm.ProgramError)  # still what the program raised
    assert f"Cell In[{n}], line 3\n" in text  # line 1 is the `%%lmprogram` line
    assert '----> 3 s += user(f"About {citty}")' in text
    assert_short(text)
    lines = text.strip().splitlines()
    assert lines[-2] == "NameError: name 'citty' is not defined"
    assert "%lmnb debug" in lines[-1] and len(lines) < 12
    assert outputs == []  # failed before its first call: no (empty) dashboard


def test_lmnb_debug_shows_the_internal_frames_again(ip, debug_off) -> None:
    with capture_output() as out:
        ip.run_line_magic("lmnb", "debug")
    assert debug_off.debug and "on" in out.stdout
    result, text, _ = run(ip, TYPO)
    assert "function.py" in text and "magics.py" in text and "ProgramError[NameError]" in text
    assert f"failed at Cell In[{result.execution_count}], line 3" in text  # not a temp file
    with capture_output():
        ip.run_line_magic("lmnb", "debug off")
    assert not debug_off.debug
    assert "function.py" not in run(ip, TYPO)[1]


def test_the_debug_default_comes_from_the_environment(ip, monkeypatch) -> None:
    monkeypatch.setenv("LMNB_DEBUG", "1")
    assert lmnb.magics.LmnbMagics(shell=ip).debug
    monkeypatch.setenv("LMNB_DEBUG", "0")
    assert not lmnb.magics.LmnbMagics(shell=ip).debug


def test_a_function_program_shows_the_call_and_the_body_line(ip, debug_off) -> None:
    defined, _, _ = run(ip, "import lmnb as lm\n@lm.function\ndef ask(s, q):\n"
                            "    s += lm.user(q)\n"
                            "    s += lm.assistant(lm.gen('a', regex=citty))\n")
    called, text, _ = run(ip, "st = ask.run(q='hi')")
    assert f"Cell In[{called.execution_count}], line 1\n----> 1 st = ask.run(q='hi')" in text
    assert f"Cell In[{defined.execution_count}], line 5, in ask()" in text
    assert text.index("ask.run") < text.index("regex=citty")  # most recent call last
    assert "NameError: name 'citty' is not defined" in text
    assert_short(text)


def test_a_failed_call_points_at_the_line_that_made_it(ip, debug_off) -> None:
    # the scripted reply cannot match the regex: the backend fails the request, off the body
    result, text, _ = run(ip, '%%lmprogram --wait --view none\ns += "Year:"\n'
                              's += gen("year", regex="[0-9]{4}", max_tokens=4)\n'
                              's += "done"\n')
    assert f"Cell In[{result.execution_count}], line 3\n" in text
    assert '----> 3 s += gen("year", regex="[0-9]{4}", max_tokens=4)' in text
    assert_short(text)


def test_a_missing_variable_lists_the_variables_and_the_closest(ip, debug_off) -> None:
    result, text, _ = run(ip, '%%lmprogram --wait --view none\n'
                              's += "Facts:" + gen("fact", max_tokens=2)\n'
                              's += "More:" + gen("other", max_tokens=2)\n'
                              'x = s["facts"]\n')
    error = result.error_in_exec
    assert isinstance(error, lm.MissingVariableError) and isinstance(error, KeyError)
    assert "----> 4 x = s[\"facts\"]" in text
    assert ("MissingVariableError: variable 'facts' is never set; did you mean 'fact'? "
            "(the state's variables: fact, other)") in text
    assert_short(text)


def test_no_view_before_the_first_call_and_a_view_after_it(ip, debug_off) -> None:
    # returning at once (no --wait), a program that fails at once shows its error, no view
    result, text, outputs = run(ip, TYPO.replace(" --wait", ""))
    assert isinstance(result.error_in_exec, NameError) and outputs == []
    assert "NameError: name 'citty' is not defined" in text
    # one that fails after its first call keeps its view (and its error); the body runs
    # ahead of its calls, so it waits for `a` first
    result, text, outputs = run(ip, '%%lmprogram --wait --view text\n'
                                    's += "Hi" + gen("a", max_tokens=2)\n'
                                    's += f"{s[\'a\']} {citty}"\n')
    assert isinstance(result.error_in_exec, NameError)
    assert outputs and "TokenStreamView" in outputs[0].data["text/plain"]


def test_an_unknown_command_lists_the_commands(ip) -> None:
    with pytest.raises(UsageError) as info:
        ip.run_line_magic("lmnb", "stats")
    message = str(info.value)
    assert "unknown command 'stats'; did you mean 'status'?" in message
    for command in ("start", "connect", "stop", "status", "cache", "flush", "policy", "debug"):
        assert command in message
    with pytest.raises(UsageError, match="give a command: start, connect"):
        ip.run_line_magic("lmnb", "")


def test_status_is_shown_once(ip, monkeypatch) -> None:
    monkeypatch.setattr(lmnb.magics, "runtime_status",
                        lambda backend: {"model": "scripted", "hit_rate": "50.0%"})
    _, text, _ = run(ip, "%lmnb status")
    assert text.count("hit_rate") == 1 and "hit_rate: 50.0%" in text and "{" not in text
    status = ip.run_line_magic("lmnb", "status")
    assert status["model"] == "scripted"  # still the data, for code that reads it


def test_ctrl_c_shows_the_cancel_line_only(ip, debug_off) -> None:
    # A kernel turns SIGINT into KeyboardInterrupt; a run started in the background inherits
    # SIGINT ignored, under which interrupt_main does nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with default_backend(ScriptedBackend(delay=0.05)):
            ip.user_ns.pop("slow", None)
            timer = threading.Thread(target=interrupt_when_streaming, args=(ip, "slow"))
            timer.start()
            result, text, _ = run(ip, '%%lmprogram --out slow --wait --view none\n'
                                      's += "Count:" + gen("n", max_tokens=200, min_tokens=200)\n')
            timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)  # so Run All stops
    assert text.strip() == ("lmnb: cancelled; 1 running request(s) aborted, "
                            "their KV slots freed")
    assert ip.user_ns["slow"].finished()


def interrupt_when_streaming(ip, name: str) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        state = ip.user_ns.get(name)
        if state is not None and state._ex.live_text:
            _thread.interrupt_main()
            return
        time.sleep(0.01)


def test_a_syntax_error_shows_as_a_cells(ip, debug_off) -> None:
    result, text, _ = run(ip, '%%lmprogram --wait\ns += "Hi"\ns += user(f"About {city}"\n')
    assert isinstance(result.error_in_exec.error, SyntaxError)
    assert f"Cell In[{result.execution_count}], line 3\n" in text
    assert text.strip().endswith("SyntaxError: '(' was never closed")
    assert_short(text)
    assert "Traceback" not in text
