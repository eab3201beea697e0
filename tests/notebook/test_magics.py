"""`%%lmprogram` and `%lmnb`, headless through IPython's shell, on the session's real engine.

The magics use the default backend, set here to a `Runtime` around the `engine` fixture; only
`%lmnb start` is checked with a stand-in runtime (a second model load would cost seconds).
"""

from __future__ import annotations

import _thread
import signal
import subprocess
import sys
import threading
import time

import pytest
from IPython import get_ipython
from IPython.core.error import UsageError
from IPython.testing.globalipapp import start_ipython
from IPython.utils.capture import capture_output

import lmnb as lm
import lmnb.lang.backend
from lmnb.lang.control import Cancelled
from lmnb.magics import LmnbMagics, parse_program_line
from tests.conftest import assert_slots_accounted, wait_idle

GREET = 's += user("Say hi in three words")\ns += assistant(gen("a"))\n'


@pytest.fixture(scope="module")
def ip(engine):
    before = lmnb.lang.backend.current_default_backend()
    lm.set_default_backend(lm.Runtime(engine=engine))
    shell = start_ipython() or get_ipython()  # None once another module has started it
    shell.run_line_magic("load_ext", "lmnb")
    yield shell
    lm.set_default_backend(before)


def cell(ip, line: str, body: str):
    return ip.run_cell_magic("lmprogram", line, body)


def test_run_now_waits_and_stores_the_state(ip) -> None:
    cell(ip, "--out st --wait --max-tokens 6 --temperature 0 --view none", GREET)
    st = ip.user_ns["st"]
    assert isinstance(st, lm.ProgramState)
    assert st["a"] and st.get_meta_info("a")["completion_tokens"] <= 6


def test_notebook_variables_and_lm_are_in_scope(ip) -> None:
    ip.user_ns["question"] = "Name a colour."
    cell(ip, "--out st2 --wait --max-tokens 4 --view none",
         's += lm.user(question)\ns += lm.assistant(lm.gen("a"))\n')
    assert "Name a colour." in ip.user_ns["st2"].text()
    assert "gen" not in ip.user_ns  # primitives are in the cell's scope, not the notebook's


def test_default_returns_at_once_and_runs_in_the_background(ip) -> None:
    cell(ip, "--out bg --max-tokens 24 --temperature 0 --view none", GREET)
    bg = ip.user_ns["bg"]
    assert not bg.progress().done  # the cell returned while the program still runs
    assert bg.sync()["a"]  # it finishes on its own
    assert bg.error() is None


def test_a_returned_cells_saved_picture_is_the_programs_end(ip, monkeypatch) -> None:
    """A cell without --wait: after a later cell, once the program has ended, its output's
    static HTML is updated to the frozen picture (what a saved notebook keeps)."""
    magics = ip.magics_manager.registry["LmnbMagics"]
    updates = []
    monkeypatch.setattr("IPython.display.DisplayHandle.update",
                        lambda self, obj, **kw: updates.append(obj._repr_html_()))
    cell(ip, "--out later --max-tokens 8 --temperature 0", GREET)
    [(view, _, _)] = magics.unsettled
    assert "running" in view._repr_html_()
    ip.user_ns["later"].sync()
    ip.run_cell("pass")  # the next cell's post_execute settles the view
    assert magics.unsettled == [] and view.frozen
    assert len(updates) == 1 and "lmnb-status-done" in updates[0]


def test_define_form_makes_a_real_function(ip) -> None:
    cell(ip, "qa(question, n=3)",
         's += user(question)\ns += assistant(gen("answer", max_tokens=n))\n')
    qa = ip.user_ns["qa"]
    assert isinstance(qa, lm.Function) and qa.arg_names == ["question", "n"]
    state = qa.run(question="Hi", temperature=0)
    assert state.get_meta_info("answer")["completion_tokens"] <= 3
    assert [n.__class__.__name__ for n in qa.trace().nodes]  # traces like any function


def test_define_form_rejects_run_options(ip) -> None:
    with pytest.raises(UsageError):
        cell(ip, "qa(question) --wait", GREET)


def test_error_in_the_body_points_into_the_cell(ip) -> None:
    result = ip.run_cell("%%lmprogram --wait --view none\nx = 1\ny = x / 0\n")
    error = result.error_in_exec
    assert isinstance(error, lm.ProgramError)
    assert isinstance(error.__cause__, ZeroDivisionError)
    tb, frames = error.__cause__.__traceback__, []
    while tb:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_lineno))
        tb = tb.tb_next
    filename, lineno = frames[-1]
    assert filename.startswith("<ipython-input") and lineno == 3  # line 1: `%%lmprogram`


@pytest.mark.parametrize(("view", "kind"), [("full", "Dashboard"), ("text", "TokenStreamView"),
                                            ("none", None)])
def test_view_option(ip, view: str, kind: str | None) -> None:
    with capture_output() as out:
        cell(ip, f"--wait --max-tokens 3 --view {view}", GREET)
    if kind is None:
        assert not out.outputs
        return
    first, final = out.outputs  # shown at once, then updated once the program is done
    assert kind in first.data["text/plain"] and kind in final.data["text/plain"]
    assert "token stream" in first.data["text/html"]  # the static picture travels along
    assert "lmnb-tok-generated" in final.data["text/html"]  # and ends as the final one


def test_bad_options_are_usage_errors(ip) -> None:
    for line in ("--view fancy", "--frobnicate", "not a signature"):
        with pytest.raises(UsageError):
            parse_program_line(line)


def test_lmnb_status_flush_policy_cache(ip, engine) -> None:
    status = ip.run_line_magic("lmnb", "status")
    assert status["model"] == engine.model_name and "\nhit_rate: " in str(status)
    wait_idle(engine)
    with capture_output():
        ip.run_line_magic("lmnb", "flush")
    assert engine.stats()["evictable_slots"] == 0
    try:
        with capture_output():
            ip.run_line_magic("lmnb", "policy fcfs")
        assert engine.policy == "fcfs"
        with pytest.raises(UsageError):
            ip.run_line_magic("lmnb", "policy nonsense")
    finally:
        engine.set_policy("lpm")
    view = ip.run_line_magic("lmnb", "cache")
    assert type(view).__name__ == "RadixTreeView"
    assert view.poller is None  # it shows the runtime as it was when the cell ran
    monitor = ip.run_line_magic("lmnb", "monitor")  # follows the runtime live
    assert type(monitor).__name__ == "Dashboard" and monitor.poller.thread.is_alive()
    monitor.close()  # a closed view's refresh thread ends
    monitor.poller.thread.join(timeout=2)
    assert not monitor.poller.thread.is_alive()
    with pytest.raises(UsageError):
        ip.run_line_magic("lmnb", "teleport")


def test_lmnb_start_uses_config_defaults_and_stop(ip, monkeypatch) -> None:
    made = []

    class FakeRuntime:
        def __init__(self, model, **kwargs):
            made.append((model, kwargs))
            self.engine = type("E", (), {"model_name": "fake"})()

        def shutdown(self):
            made.append("shutdown")

    before = lmnb.lang.backend.current_default_backend()
    monkeypatch.setattr(lm, "Runtime", FakeRuntime)
    magics = ip.magics_manager.registry["LmnbMagics"]
    monkeypatch.setattr(magics, "max_tokens_in_cache", 512)
    try:
        with capture_output():
            ip.run_line_magic("lmnb", "start --policy fcfs")
        assert made == [(None, {"policy": "fcfs", "max_tokens_in_cache": 512})]
        assert isinstance(lmnb.lang.backend.current_default_backend(), FakeRuntime)
        ip.run_line_magic("lmnb", "stop")
        assert made[-1] == "shutdown" and lmnb.lang.backend.current_default_backend() is None
    finally:
        lm.set_default_backend(before)


def test_config_options_are_traitlets() -> None:
    names = LmnbMagics.class_trait_names(config=True)
    assert {"model", "policy", "max_tokens_in_cache"} <= set(names)


def test_loading_the_magics_does_not_import_widgets() -> None:
    code = ("import sys, lmnb.magics; bad = {'anywidget', 'ipywidgets', 'torch'} & "
            "set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cell_scope_reaches_notebook_names_and_primitives_from_nested_code() -> None:
    from lmnb.magics import CellScope, compile_program

    ns = {"items": [1, 2, 3], "__builtins__": __builtins__}
    body = ("def h():\n    return gen, len(items)\n"
            "return [x * k for x in items], h(), lm.__name__\n")
    program = compile_program("p", "k=2", body, "<cell>", CellScope(ns))
    assert program.func(None) == ([2, 4, 6], (lm.gen, 3), "lmnb")
    ns["items"] = [5]  # the notebook's names are read live, at call time
    assert program.func(None)[0] == [10]


FRUIT = 's += user(f"Describe a {fruit} in {n} words.")\ns += assistant(gen("a"))\n'


def test_batch_runs_the_cell_over_argument_dicts(ip) -> None:
    ip.user_ns["items"] = [{"fruit": f, "n": 3} for f in ("apple", "pear", "plum")]
    cell(ip, "--batch items --out states --wait --max-tokens 4 --temperature 0 --view none",
         FRUIT)
    states = ip.user_ns["states"]
    assert [type(st) for st in states] == [lm.ProgramState] * 3
    for st, fruit in zip(states, ("apple", "pear", "plum"), strict=True):
        assert f"Describe a {fruit} in 3 words." in st.text() and st["a"]
    # the same program through run_batch gives the same greedy answers
    ip.user_ns.pop("fruit_prog", None)
    cell(ip, "fruit_prog(fruit, n)", FRUIT)
    again = ip.user_ns["fruit_prog"].run_batch(ip.user_ns["items"], temperature=0, max_tokens=4)
    assert [st["a"] for st in again] == [st["a"] for st in states]


def test_batch_without_wait_returns_at_once(ip) -> None:
    ip.user_ns["few"] = [{"fruit": "fig", "n": 2}, {"fruit": "kiwi", "n": 2}]
    cell(ip, "--batch few --out bg_states --max-tokens 16 --view none", FRUIT)
    states = ip.user_ns["bg_states"]
    assert not all(st.finished() for st in states)
    assert all(st.sync()["a"] for st in states)


def test_batch_needs_a_list_of_dicts_with_the_same_keys(ip) -> None:
    ip.user_ns["odd"] = [{"fruit": "fig", "n": 1}, {"fruit": "kiwi"}]
    ip.user_ns["notalist"] = 3
    for var in ("odd", "notalist", "missing_var"):
        with pytest.raises(UsageError):
            cell(ip, f"--batch {var} --view none", FRUIT)
    with pytest.raises(UsageError):
        cell(ip, "qa(fruit) --batch odd", FRUIT)


LONG_FORK = (
    's += user("Count slowly.")\n'
    "forks = s.fork(2)\n"
    "for f in forks:\n"
    '    f += assistant(gen("count", max_tokens=160, min_tokens=160))\n'
    "forks.join()\n"
    's += "never reached"\n'
)


def _interrupt_once_streaming(ip, name: str, fired: list[bool]) -> None:
    """Ctrl-C, as the kernel delivers it, once the cell's forks are generating."""
    deadline = time.time() + 120
    while time.time() < deadline:
        state = ip.user_ns.get(name)
        if state is not None and any(c.live_text for c in state._ex.children):
            fired.append(True)
            _thread.interrupt_main()
            return
        time.sleep(0.02)


def test_ctrl_c_on_a_waiting_cell_cancels_its_requests(ip, engine) -> None:
    # A kernel turns SIGINT into KeyboardInterrupt. A test run started in the background
    # (`make test &`) inherits SIGINT ignored, under which interrupt_main does nothing.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _ctrl_c_cancels(ip, engine)
    finally:
        signal.signal(signal.SIGINT, previous)


def _ctrl_c_cancels(ip, engine) -> None:
    wait_idle(engine)
    ip.user_ns.pop("stopped", None)
    fired: list[bool] = []
    timer = threading.Thread(target=_interrupt_once_streaming, args=(ip, "stopped", fired))
    timer.start()
    started = time.time()
    with pytest.raises(KeyboardInterrupt, match="cancelled; 2 running request"):
        cell(ip, "--out stopped --wait --temperature 0 --view none", LONG_FORK)
    timer.join()
    assert fired and time.time() - started < 60
    state = ip.user_ns["stopped"]
    assert isinstance(state.error().cause, Cancelled)
    assert state.finished() and "never reached" not in state._ex.text
    for child in state._ex.children:  # stopped mid-gen: the variable never arrived
        assert "count" not in child.variables
    wait_idle(engine)
    st = engine.stats()
    assert st["protected_slots"] == st["in_flight_slots"] == 0 and st["num_running"] == 0
    assert_slots_accounted(engine)
    # the runtime keeps serving: a plain request and the next cell both run
    assert engine.generate("The sky is", max_new_tokens=3).result().completion_tokens == 3
    cell(ip, "--out after --wait --max-tokens 3 --view none", GREET)
    assert ip.user_ns["after"]["a"]


def test_an_error_shows_a_traceback_with_the_cells_line(ip) -> None:
    with capture_output() as out:
        ip.run_cell("%%lmprogram --wait --view none\nx = 1\ny = x / 0\n")
    shown = out.stdout + out.stderr
    assert "----> 3 y = x / 0" in shown and "ZeroDivisionError: division by zero" in shown
    assert "ProgramError" not in shown  # the body's own error (tests/notebook/test_errors_...)


def test_lmnb_connect_runs_cells_on_a_remote_runtime_and_draws_it(ip, engine) -> None:
    from lmnb.server.serve import start_server

    before = lmnb.lang.backend.current_default_backend()
    magics = ip.magics_manager.registry["LmnbMagics"]
    srv = start_server(engine)
    try:
        with capture_output() as out:
            ip.run_line_magic("lmnb", f"connect {srv.url}")
        assert srv.url in out.stdout and "token ids" in out.stdout
        remote = lmnb.lang.backend.current_default_backend()
        assert isinstance(remote, lm.RuntimeEndpoint)
        num_requests = engine.stats()["num_requests"]
        with capture_output() as out:
            cell(ip, "--out there --wait --max-tokens 4 --temperature 0", GREET)
        assert ip.user_ns["there"]["a"] and engine.stats()["num_requests"] > num_requests
        assert "radix tree" in out.outputs[-1].data["text/html"]  # the dashboard drew it
        with capture_output():
            status = ip.run_line_magic("lmnb", "status")
        assert status["connected"] == srv.url and status["model"] == engine.model_name
        assert "hit_rate" in status and "token ids" in status["mode"]
        view = ip.run_line_magic("lmnb", "cache")
        assert view.engine is remote and view.num_nodes > 0 and "<svg" in view._repr_html_()
        view.close()
        with pytest.raises(UsageError, match="server"):
            ip.run_line_magic("lmnb", "policy fcfs")
        with capture_output() as out:
            ip.run_line_magic("lmnb", "stop")
        assert "disconnected" in out.stdout
        assert lmnb.lang.backend.current_default_backend() is None
    finally:
        magics.connected = None
        lm.set_default_backend(before)
        for thread in threading.enumerate():  # the views' pollers end once the runtime idles
            if thread.name == "lmnb-view":
                thread.join(timeout=5)
        srv.stop()
