"""The trace and token-stream views and the tree's event flashes, after real runs on the
session's engine; the language-level pieces they read (the token ledger, cancel, a streamed
run's sync); the trace layout on made-up events."""

from __future__ import annotations

import time

import pytest

import lmnb as lm
import lmnb.widgets.tree as tree_module
from lmnb.lang.control import Cancelled
from lmnb.lang.events import CATEGORIES
from lmnb.widgets import CacheStatsView, Dashboard, RadixTreeView, TokenStreamView, TraceView
from lmnb.widgets.trace_svg import ROW_H, calls_html, trace_model, trace_svg
from tests.conftest import assert_slots_accounted, wait_idle

NAME_REGEX = r'\{"name": "[a-z]{1,8}"\}'


@pytest.fixture(scope="module")
def runtime(engine):
    return lm.Runtime(engine=engine)


@lm.function
def forked_then_json(s, n=3):
    s += lm.user("List three fruits.")
    forks = s.fork(n)
    for i, f in enumerate(forks):
        f += lm.assistant(f"Fruit {i}:" + lm.gen("fruit", max_tokens=4))
    forks.join()
    s += "Favourite as JSON: " + lm.gen("best", max_tokens=12, regex=NAME_REGEX)
    s += " Sure?" + lm.select("sure", choices=["yes", "no"])


def _streams(ex) -> int:
    return 1 + sum(_streams(c) for c in ex.children)


def test_trace_has_a_lane_per_stream_and_spans_with_counts(runtime) -> None:
    state = forked_then_json.run(backend=runtime, temperature=0)
    view = TraceView(state, live=False)
    assert view.num_lanes == _streams(state._ex) == 4
    assert view.lanes == ["s", "fork 1", "fork 2", "fork 3"]
    gens = [s for s in view.spans if s["op"] == "gen"]
    assert sorted(s["name"] for s in gens) == ["best", "fruit", "fruit", "fruit"]
    for span in gens:  # counts are the call's own, as get_meta_info reports them
        assert not span["running"] and span["t1"] >= span["t0"]
        assert span["prompt_tokens"] > span["cached_tokens"] >= 0
    fruit = [s for s in gens if s["name"] == "fruit"]
    assert all(s["cached_tokens"] > 0 for s in fruit)  # the fork committed the shared prefix
    [select] = [s for s in view.spans if s["op"] == "select"]
    assert select["name"] == "sure" and select["prompt_tokens"] > 0
    kinds = [(e["kind"], e["from_lane"], e["to_lane"]) for e in view.edges]
    assert sorted(kinds) == sorted([("fork", 0, i) for i in (1, 2, 3)]
                                   + [("join", i, 0) for i in (1, 2, 3)])
    assert view.done and "<svg" in view._repr_html_() and "fruit" in view.html


def _own_tokens(state) -> int:
    """Tokens the stream shows: the root's, and each fork's from its fork point on."""
    return sum(len(s.ids) - s.fork_start for s in state.progress().root.walk())


def test_token_stream_categories_add_up_to_the_states_tokens(runtime) -> None:
    state = forked_then_json.run(backend=runtime, temperature=0)
    view = TokenStreamView(state, live=False)
    ids = state.token_ids()
    assert sum(view.counts.values()) == view.num_tokens == _own_tokens(state) > len(ids)
    assert set(view.counts) == {*CATEGORIES, "reading"} and view.counts["reading"] == 0
    root = state.progress().root
    assert root.ids == ids and len(root.categories) == len(ids)
    meta = state.get_meta_info("best")
    assert root.categories.count("jump_forward") == meta["forced_tokens"] > 0
    sure_ids = len(runtime.tokenizer.encode(state["sure"]))  # a choice is appended as encoded
    assert (root.categories.count("generated") + root.categories.count("jump_forward")
            == meta["completion_tokens"] + sure_ids)
    assert view.counts["cached"] > 0 and view.counts["computed"] > 0
    assert "pending" not in root.categories  # the select read everything before it
    html = view._repr_html_()
    for cls in ("cached", "computed", "generated", "jump_forward"):
        assert f"lmnb-tok-{cls}" in html
    assert "jump-forward" in html and "tokens, each once" in html  # the legend
    for child in root.children:  # each fork's own text, in a lane of its own
        own = child.categories[child.fork_start:]
        assert own and "generated" in own  # (its turn's end no call read: pending)
        assert f'class="lmnb-lane" data-stream="{child.stream_id}"' in html
    for fruit in state["fruit"]:  # every fork's answer is on screen
        assert runtime.tokenizer.decode(runtime.tokenizer.encode(fruit)).strip() in html


def test_token_categories_follow_the_calls_that_read_them(runtime) -> None:
    @lm.function
    def two_turns(s):
        s += lm.user("Say a colour.") + lm.assistant(lm.gen("a", max_tokens=3))
        s += lm.user("Another one.") + lm.assistant(lm.gen("b", max_tokens=3))
        s += "trailing text"

    state = two_turns.run(backend=runtime, temperature=0)
    cats = state._ex.ledger.categories()
    meta_a, meta_b = state.get_meta_info("a"), state.get_meta_info("b")
    cached_b, prompt_b = meta_b["cached_tokens"], meta_b["prompt_tokens"]
    # the first call computed its whole prompt (a fresh prefix), then generated
    assert set(cats[: meta_a["prompt_tokens"]]) <= {"computed", "cached"}
    assert cats[:prompt_b].count("generated") == meta_a["completion_tokens"]
    # the second call's prompt: a cached head (holding the first answer), the computed rest
    assert cached_b > meta_a["prompt_tokens"]
    assert set(cats[meta_a["prompt_tokens"]:cached_b]) == {"generated"}
    assert set(cats[cached_b:prompt_b]) <= {"computed", "generated"}
    assert "computed" in cats[cached_b:prompt_b]
    assert set(cats[-len(runtime.tokenizer.encode("trailing text")):]) == {"pending"}


def test_tree_view_flashes_hits_splits_and_evictions(runtime, engine, monkeypatch) -> None:
    wait_idle(engine)
    view = RadixTreeView(engine, live=False)
    base = engine.tokenizer.encode("One two three four five six seven eight nine ten")
    engine.generate(base + [11, 12], max_new_tokens=1).result()
    view.refresh()
    assert view.event_counts["insert"] >= 1 and 'lmnb-flash-insert' in view.html
    engine.generate(base + [13, 14], max_new_tokens=1).result()  # splits the shared node
    view.refresh()
    assert view.event_counts["split"] >= 1 and view.event_counts["hit"] >= 1
    assert "lmnb-flash-split" in view.html
    engine.generate(base + [13, 14, 15], max_new_tokens=1).result()  # hits, splits nothing
    view.refresh()
    assert "lmnb-flash-hit" in view.html and "lmnb-flash-split" in view.html
    assert view.num_flashing > 0 and view.recent_events[-1]["type"] in ("insert", "hit")
    wait_idle(engine)
    engine.flush_cache()
    view.refresh()
    assert view.event_counts["evict"] >= 2 and "lmnb-node-evicted" in view.html
    snapshot_nodes = [n for n in engine.snapshot()["nodes"] if n["parent"] is not None]
    assert view.num_nodes == len(snapshot_nodes)  # ghosts are drawn, not counted
    later = time.monotonic() + 10
    monkeypatch.setattr(tree_module.time, "monotonic", lambda: later)
    view.refresh()  # the flashes fade and the ghosts go
    assert "lmnb-flash" not in view.html and "lmnb-node-evicted" not in view.html
    assert view.num_flashing == 0


def test_dashboard_models_equal_the_runtime_after_a_run(runtime, engine) -> None:
    state = forked_then_json.run(backend=runtime, temperature=0)
    wait_idle(engine)
    board = Dashboard(runtime, state=state, live=False)
    nodes = [n for n in engine.snapshot()["nodes"] if n["parent"] is not None]
    assert board.tree.num_nodes == len(nodes)
    assert board.tree.num_tokens == sum(n["num_tokens"] for n in nodes)
    assert board.tree.dom_data["num-nodes"] == len(nodes)
    st = engine.stats()
    assert board.stats.cached_tokens == st["cached_tokens"]
    assert board.trace.num_lanes == _streams(state._ex)
    assert sum(board.tokens.counts.values()) == _own_tokens(state)


def test_a_batch_dashboard_has_lanes_for_every_run(runtime) -> None:
    states = forked_then_json.run_batch([{"n": 2}, {"n": 1}], backend=runtime, temperature=0)
    trace = TraceView(states, live=False)
    assert trace.num_lanes == sum(_streams(s._ex) for s in states) == 5
    assert trace.lanes[0] == "#0 s" and "#1 fork 1" in trace.lanes
    tokens = TokenStreamView(states, live=False)
    assert tokens.num_tokens == sum(_own_tokens(s) for s in states)
    assert tokens.num_streams == 5 and "run #1" in tokens.html


def test_streamed_sync_waits_for_the_body(runtime) -> None:
    @lm.function
    def slow(s):
        time.sleep(0.5)  # the body has submitted nothing yet when sync() is called
        s += "Hello" + lm.gen("a", max_tokens=2)

    state = slow.run(backend=runtime, stream=True)
    state.sync()
    assert "a" in state._ex.variables and state.finished()


def test_cancel_aborts_the_requests_and_fails_the_state(runtime, engine) -> None:
    @lm.function
    def long(s):
        s += "Count to a thousand:" + lm.gen("n", max_tokens=300, min_tokens=300)

    state = long.run(backend=runtime, stream=True, temperature=0)
    deadline = time.time() + 60
    while not state._ex.live_text and time.time() < deadline:
        time.sleep(0.02)
    assert state.cancel() == 1
    error = state.error()
    assert isinstance(error.cause, Cancelled) and state.finished()
    wait_idle(engine)
    assert engine.stats()["protected_slots"] == 0
    assert_slots_accounted(engine)
    with pytest.raises(lm.ProgramError):
        state["n"]


def _ev(kind, sid, t, name=None, **data):
    return {"kind": kind, "stream_id": sid, "time": t, "name": name, "data": data}


def test_trace_model_on_made_up_events() -> None:
    events = [_ev("start", 0, 0.0, op="fork"), _ev("fork", 0, 0.1, children=[1, 2]),
              _ev("end", 0, 0.1, op="fork"),
              _ev("start", 1, 0.2, "x", op="gen"),
              _ev("end", 1, 0.5, "x", op="gen", prompt_tokens=10, cached_tokens=8,
                  completion_tokens=3),
              _ev("start", 2, 0.2, "x", op="gen")]  # still running
    model = trace_model([(100.0, events)], now=101.0)
    assert model["lanes"] == ["s", "fork 1", "fork 2"]
    running = [s for s in model["spans"] if s["running"]]
    assert len(running) == 1 and running[0]["t1"] == pytest.approx(1.0)
    assert [e["kind"] for e in model["edges"]] == ["fork", "fork"]
    svg = trace_svg(model)
    assert svg.count("lmnb-edge-fork") == 2
    assert "prompt 10 tokens (8 cached, 2 computed), 3 generated" in svg  # the tooltip
    assert "lmnb-span-running" in svg
    table = calls_html(model)  # the shares: one call, 8 | 2 | 3 tokens
    assert "8 / 10" in table and 'title="8 cached"' in table and 'title="3 generated"' in table
    failed = trace_model([(0.0, [_ev("start", 0, 0.0, "y", op="gen"),
                                 _ev("error", 0, 0.4, message="program 'p' failed: boom")]),
                          (0.0, [_ev("start", 0, 0.0, "z", op="gen"),
                                 _ev("error", 0, 0.3, message="Cancelled: the program was "
                                     "cancelled")])], now=5.0)
    assert [s["status"] for s in failed["spans"]] == ["failed", "cancelled"]
    assert [s["t1"] for s in failed["spans"]] == [0.4, 0.3] and failed["t_max"] == 5.0
    assert "✗ failed" in trace_svg(failed) and "✗ cancelled" in trace_svg(failed)


def test_trace_labels_are_whole_and_forks_and_joins_drawn() -> None:
    """Short spans side by side: each label on a row of its own above its box (the lane grows),
    not cut; a long span's label inside its box; the fork and the join are labelled boxes."""
    events = [_ev("start", 0, 0.0, op="fork"), _ev("fork", 0, 0.01, children=[1, 2]),
              _ev("end", 0, 0.01, op="fork", prompt_tokens=5, cached_tokens=0),
              _ev("start", 0, 0.01, op="join")]
    for sid, names in ((1, ["sweetest", "sourest", "dessert"]), (2, ["a long-running one"])):
        t = 0.02
        for name in names:
            dt = 0.03 if sid == 1 else 0.9
            events += [_ev("start", sid, t, name, op="gen"),
                       _ev("end", sid, t + dt, name, op="gen", prompt_tokens=4,
                           cached_tokens=1, completion_tokens=2)]
            t += dt
    events += [_ev("join", 0, 1.0, children=[1, 2]), _ev("end", 0, 1.0, op="join")]
    model = trace_model([(0.0, events)], now=1.0)
    svg = trace_svg(model)
    for name in ("gen sweetest", "gen sourest", "gen dessert", "fork ×2", "join ×2"):
        assert f">{name}</text>" in svg, name  # whole, not cut with …
    assert "…</text>" not in svg
    assert svg.count("lmnb-in-box") == 2  # the long gen's and the join's labels fit inside
    assert svg.count('class="lmnb-span-fork') == svg.count('class="lmnb-span-join') == 1
    assert svg.count("lmnb-edge-fork") == svg.count("lmnb-edge-join") == 2
    no_gens = trace_svg(trace_model([(0.0, events[:4])], now=1.0))  # the same three lanes
    height = lambda svg: int(svg.split('height="')[1].split('"')[0])  # noqa: E731
    assert height(svg) == height(no_gens) + 2 * ROW_H  # fork 1's two more label rows
    assert "fork ×2" in calls_html(model)  # the calls table names every call in full


@lm.function
def ask(s, question):
    s += lm.system("You are a terse assistant.")
    s += lm.user(question)
    s += lm.assistant(lm.gen("answer", max_tokens=6, stop="\n"))


def test_each_cells_views_keep_their_moment(runtime, engine) -> None:
    """Three programs, a dashboard and a tree/stats view after each (as three cells make them):
    three growing trees; each dashboard froze when its program ended, at the moment the
    views made right after it show, and later programs leave it as it was."""
    _three_cells(runtime, engine)


def test_views_of_a_remote_runtime_keep_their_moment_too(engine) -> None:
    """The same against `lmnb serve` (views drawn from /snapshot and /events)."""
    from lmnb.server.serve import start_server

    srv = start_server(engine)
    try:
        _three_cells(lm.RuntimeEndpoint(srv.url), engine)
    finally:
        srv.stop()


def _three_cells(runtime, engine) -> None:
    lm.flush_cache(runtime)
    wait_idle(engine)
    boards, trees, stats = [], [], []
    for question in ("Name a colour.", "Name a fruit.", "Name a city in Spain."):
        state = ask.run(question=question, backend=runtime, stream=True, temperature=0)
        board = Dashboard(runtime, state=state)  # follows the program, then freezes
        state.sync()
        board.poller.thread.join(timeout=5)
        assert board.frozen and not board.poller.thread.is_alive()
        wait_idle(engine)
        boards.append(board)
        trees.append(RadixTreeView(runtime))
        stats.append(CacheStatsView(runtime))
    assert all(t.poller is None and s.poller is None for t, s in zip(trees, stats, strict=True))
    tokens = [t.num_tokens for t in trees]
    assert tokens[0] < tokens[1] < tokens[2] and len({t.html for t in trees}) == 3
    assert stats[0].prompt_tokens < stats[1].prompt_tokens < stats[2].prompt_tokens
    for board, tree, stat in zip(boards, trees, stats, strict=True):  # tree and stats together
        assert board.tree.num_tokens == tree.num_tokens
        assert board.stats.prompt_tokens == stat.prompt_tokens
    assert "Spain" not in boards[0]._repr_html_() and "Spain" in boards[2]._repr_html_()


def test_figures_reconcile_program_trace_and_runtime(runtime, engine) -> None:
    """"This program's calls" in the token stream = the trace's calls summed = the runtime's
    counters' growth over the run (nothing else ran); each labelled by what it counts."""
    wait_idle(engine)
    before = engine.stats()
    state = forked_then_json.run(backend=runtime, temperature=0)
    wait_idle(engine)
    after = engine.stats()
    calls = state.progress().calls
    trace = TraceView(state, live=False)
    spans = [s for s in trace.spans if s.get("call")]
    assert calls.num_calls == len(spans) == 6  # fork commit, 3 fruits, best, sure
    for key, runtime_key in (("prompt_tokens", "prompt_tokens"),
                             ("cached_tokens", "cached_tokens"),
                             ("completion_tokens", "generated_tokens")):
        grew = after[runtime_key] - before[runtime_key]
        assert getattr(calls, key) == sum(s[key] for s in spans) == grew, key
    view = TokenStreamView(state, live=False)
    assert view.calls["cached_tokens"] == calls.cached_tokens > 0
    assert (f"prompt tokens {calls.prompt_tokens}, of which cached {calls.cached_tokens}"
            in view.html and "this program's calls" in view.html)
    assert f"{calls.cached_tokens} / {calls.prompt_tokens}" in trace.html  # the calls' total
    stats = CacheStatsView(runtime)
    assert "runtime since start" in stats.html and stats.cached_tokens == after["cached_tokens"]


def test_progress_and_the_stop_button(runtime, engine) -> None:
    @lm.function
    def long(s):
        s += "Count to a thousand:" + lm.gen("n", max_tokens=300, min_tokens=300)

    state = long.run(backend=runtime, stream=True, temperature=0)
    board = Dashboard(runtime, state=state)
    deadline = time.time() + 60
    while not (running := state.progress().running) or running[0].num_tokens < 3:
        assert time.time() < deadline
        time.sleep(0.02)
    progress = state.progress()
    [gen] = progress.running
    assert progress.status == "running" and progress.elapsed > 0 and not progress.done
    assert gen.name == "n" and gen.max_tokens == 300 and gen.tokens_per_second > 0
    assert set(progress.root.categories) == {"reading"}  # the running call's prompt
    board.refresh()
    assert "gen n in s:" in board.tokens.html and "/300 tokens" in board.tokens.html
    assert board.tokens.counts["generated"] >= 3 and "running" in board.tokens.html
    assert board.stop() == 1  # as Ctrl-C: the request aborted
    state.error()
    progress = state.progress()
    assert progress.status == "cancelled" and progress.running == [] and progress.done
    board.poller.thread.join(timeout=5)
    assert board.frozen and board.button.disabled
    [span] = [s for s in board.trace.spans if s["op"] == "gen"]
    assert span["status"] == "cancelled" and "✗ cancelled" in board.trace.html
    assert "cancelled" in board.tokens.html
    wait_idle(engine)


def test_a_failed_gen_ends_its_span_as_failed() -> None:
    from lmnb.testing import ScriptedBackend

    def script(prompt: str) -> str:
        raise ValueError("the script refuses")

    @lm.function
    def broken(s):
        s += "Hello" + lm.gen("x", max_tokens=3)

    state = broken.run(backend=ScriptedBackend(script), stream=True)
    assert isinstance(state.error(), lm.ProgramError)
    progress = state.progress()
    assert progress.status == "failed" and "refuses" in progress.error
    [span] = TraceView(state, live=False).spans
    assert span["status"] == "failed" and not span["running"]


def test_token_stream_opens_at_its_end_and_keys_its_colours() -> None:
    """The text box is a reversed flex column (it opens at, and follows, its end; also in the
    static picture), whole lines high; the legend counts the text's tokens, each once, apart
    from the calls' figure (which counts a re-read token again)."""
    from lmnb.testing import ScriptedBackend

    @lm.function
    def chat(s):
        for q in ("One?", "Two?", "Three?"):
            s += lm.user(q) + lm.assistant(lm.gen(max_tokens=4))

    state = chat.run(backend=ScriptedBackend("Yes, it is."))
    view = TokenStreamView(state, live=False)
    assert "flex-direction:column-reverse" in view.html and "calc(16 * 1.55em)" in view.html
    assert f"the text's {view.num_tokens} tokens, each once:" in view.html
    calls = state.progress().calls
    assert calls.prompt_tokens > view.num_tokens  # later turns re-read the earlier ones
    assert f"reading prompt tokens {calls.prompt_tokens}, of which cached" in view.html
