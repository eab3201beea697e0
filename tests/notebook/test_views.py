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
from lmnb.widgets import Dashboard, RadixTreeView, TokenStreamView, TraceView
from lmnb.widgets.trace_svg import trace_model, trace_svg
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


def test_token_stream_categories_add_up_to_the_states_tokens(runtime) -> None:
    state = forked_then_json.run(backend=runtime, temperature=0)
    view = TokenStreamView(state, live=False)
    ids = state.token_ids()
    assert sum(view.counts.values()) == view.num_tokens == len(ids)
    assert set(view.counts) == set(CATEGORIES)
    meta = state.get_meta_info("best")
    assert view.counts["jump_forward"] == meta["forced_tokens"] > 0
    sure_ids = len(runtime.tokenizer.encode(state["sure"]))  # a choice is appended as encoded
    assert (view.counts["generated"] + view.counts["jump_forward"]
            == meta["completion_tokens"] + sure_ids)
    assert view.counts["cached"] > 0 and view.counts["computed"] > 0
    assert view.counts["pending"] == 0  # the select read everything before it
    html = view._repr_html_()
    for cls in ("cached", "computed", "generated", "jump_forward"):
        assert f"lmnb-tok-{cls}" in html
    assert "jump-forward" in html and "cached prompt" in html  # the legend
    for child in state._ex.children:  # a fork child's stream adds up too
        child_view = TokenStreamView(lm.ProgramState(child), live=False)
        assert sum(child_view.counts.values()) == len(child.ids)
        assert child_view.counts["cached"] > 0 and child_view.counts["generated"] > 0


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
    assert sum(board.tokens.counts.values()) == len(state.token_ids())


def test_a_batch_dashboard_has_lanes_for_every_run(runtime) -> None:
    states = forked_then_json.run_batch([{"n": 2}, {"n": 1}], backend=runtime, temperature=0)
    trace = TraceView(states, live=False)
    assert trace.num_lanes == sum(_streams(s._ex) for s in states) == 5
    assert trace.lanes[0] == "#0 s" and "#1 fork 1" in trace.lanes
    tokens = TokenStreamView(states, live=False)
    assert tokens.num_tokens == sum(len(s.token_ids()) for s in states)
    assert "<b>#1</b>" in tokens.html


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
    assert svg.count("lmnb-edge-fork") == 2 and "2 cached" not in svg
    assert "8 cached, 2 computed, 3 gen" in svg and "running" in svg
