"""Program state semantics: ids, variables, scopes, forks, roles, events.

On a scripted backend, except where the default model's tokenizer, chat template or engine is
what a test checks (`runtime`).
"""

from __future__ import annotations

import threading

import pytest

import lmnb as lm


def test_ids_spell_the_text_even_when_a_stop_string_ends_inside_a_token(runtime):
    @lm.function
    def capital(s):
        s += "The capital of France is"
        s += lm.gen("city", max_tokens=4, stop="ari")  # " Paris" is one token

    state = capital.run(backend=runtime)
    assert state["city"] == " P"
    assert runtime.tokenizer.decode(state.token_ids()) == state.text()
    assert state.text() == "The capital of France is P"


def test_constant_text_is_tokenised_piece_by_piece(runtime):
    @lm.function
    def pieces(s):
        s += "Hello"
        s += " world"

    state = pieces.run(backend=runtime)
    tok = runtime.tokenizer
    assert state.token_ids() == tok.encode("Hello") + tok.encode(" world")


@pytest.mark.usefixtures("scripted")
def test_variables_scopes_and_assignment():
    @lm.function
    def prog(s):
        with s.var_scope("greeting"):
            s += "Hello"
            s += ", world"
        s["note"] = "set by the program"
        s += " (" + s["note"] + ")"

    state = prog.run()
    assert state["greeting"] == "Hello, world"
    assert state.text() == "Hello, world (set by the program)"
    assert "note" in state and "missing" not in state
    state["greeting"] = 42  # after the run, assignment is immediate
    assert state["greeting"] == 42


def test_body_runs_ahead_of_the_worker(scripted):
    scripted.delay = 0.03  # 12 tokens take 0.36 s
    reached_end = threading.Event()

    @lm.function
    def prog(s):
        s += "Count from one to five: one, two,"
        s += lm.gen("rest", max_tokens=12)
        reached_end.set()

    state = prog.run(stream=True)
    assert reached_end.wait(5)
    assert not state.finished()  # the body ended while the worker still generates
    assert isinstance(state["rest"], str)
    assert state.get_meta_info("rest")["completion_tokens"] == 12


@pytest.mark.usefixtures("scripted")
def test_nested_forks_gather_lists_of_lists():
    @lm.function
    def prog(s):
        s += "Colors:"
        outer = s.fork(2)
        for i in range(2):
            outer[i] += f" group {i}:"
            inner = outer[i].fork(2)
            inner += [" red", " blue"]
            inner += lm.gen("word", max_tokens=2)
            inner.join()
        outer.join()
        s += " done"

    state = prog.run()
    words = state["word"]
    assert len(words) == 2 and all(len(w) == 2 for w in words)
    assert all(isinstance(x, str) for pair in words for x in pair)
    assert state.text() == "Colors: done"


@pytest.mark.usefixtures("scripted")
def test_fork_children_start_from_the_parent_and_keep_their_own_text():
    @lm.function
    def prog(s):
        s["topic"] = "cats"
        s += "Animals:"
        forks = s.fork(3)
        forks += " cat"
        forks += lambda i: f" #{i}"
        forks.join()
        s += " end"
        return forks

    state = prog.run()
    forks = state.ret_value
    assert [f.text() for f in forks] == [f"Animals: cat #{i}" for i in range(3)]
    assert all(f["topic"] == "cats" for f in forks)
    assert state.text() == "Animals: end"


def test_roles_with_begin_end_and_the_templates_default_system_prompt(runtime):
    @lm.function
    def chat(s):
        s += lm.user_begin() + "Say hi." + lm.user_end()
        s += lm.assistant_begin() + lm.gen("reply", max_tokens=6) + lm.assistant_end()

    state = chat.run(backend=runtime)
    head = runtime.chat_template.head
    assert head and state.text().startswith(head)
    assert [m["role"] for m in state.messages()] == ["user", "assistant"]
    assert state.messages()[1]["content"] == state["reply"]
    expected = runtime.tokenizer.hf.apply_chat_template(state.messages(), tokenize=False)
    assert state.text() == expected


@pytest.mark.usefixtures("scripted")
def test_state_role_methods_append_whole_messages():
    @lm.function
    def chat(s):
        s.system("Be brief.")
        s.user("Hi")

    assert [m["content"] for m in chat.run().messages()] == ["Be brief.", "Hi"]


@pytest.mark.usefixtures("scripted")
def test_events_per_stream():
    @lm.function
    def prog(s):
        s += "Two facts about the moon:"
        forks = s.fork(2)
        forks += lm.gen("fact", max_tokens=3)
        forks.join()

    state = prog.run()
    events = state.events()
    kinds = {e.kind for e in events}
    assert {"start", "end", "tokens", "fork", "join", "cache_hit"} <= kinds
    (fork,) = [e for e in events if e.kind == "fork"]
    assert fork.stream_id == 0 and fork.data["children"] == [1, 2]
    for child in (1, 2):
        child_events = [e for e in events if e.stream_id == child]
        assert [e.kind for e in child_events if e.kind in ("start", "end")] == ["start", "end"]
        assert any(e.kind == "cache_hit" for e in child_events)
        assert all(e.to_dict()["stream_id"] == child for e in child_events)


@pytest.mark.usefixtures("scripted")
def test_run_batch_with_positional_items_and_a_progress_bar(capsys):
    @lm.function
    def echo(s, word):
        s += "Repeat: " + word

    states = echo.run_batch([["a"], ["b"], ["c"]], progress_bar=True)
    assert [s.text() for s in states] == ["Repeat: a", "Repeat: b", "Repeat: c"]
    assert "3/3" in capsys.readouterr().err


@pytest.mark.usefixtures("scripted")
def test_run_defaults_and_per_call_overrides():
    @lm.function
    def prog(s):
        s += "List some fruits:"
        s += lm.gen("short")  # the run's max_new_tokens
        s += lm.gen("longer", max_tokens=5)  # overrides it

    state = prog.run(max_new_tokens=2)
    assert state.get_meta_info("short")["completion_tokens"] == 2
    assert state.get_meta_info("longer")["completion_tokens"] == 5


@pytest.mark.usefixtures("scripted")
def test_logprobs_in_meta_info_when_asked():
    @lm.function
    def prog(s):
        s += "One, two, three,"
        s += lm.gen("n", max_tokens=3, return_logprob=True)

    meta = prog.run().get_meta_info("n")
    out = meta["output_token_logprobs"]  # SGLang's (logprob, token_id, text) triples
    assert len(out) == meta["completion_tokens"]
    assert all(lp <= 0 and isinstance(i, int) and isinstance(t, str) for lp, i, t in out)


def test_flush_cache_and_server_info(runtime):
    assert lm.flush_cache() is True  # the default backend: the runtime fixture's
    assert lm.get_server_info()["policy"] == runtime.engine.policy
