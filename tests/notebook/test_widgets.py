"""The views after real runs on the session's engine, their static pictures, the tree layout
on made-up snapshots, the refresh thread's rate, and that no asset comes from the network."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

import lmnb as lm
from lmnb.widgets import CacheStatsView, Dashboard, RadixTreeView, TextView
from lmnb.widgets.poller import Poller
from lmnb.widgets.tree_svg import busiest, label_parts, short, tree_svg
from tests.conftest import wait_idle

STATIC = Path(lm.__file__).parent / "widgets" / "static"


@pytest.fixture(scope="module")
def runtime(engine):
    return lm.Runtime(engine=engine)


@lm.function
def forked(s):
    s += lm.user("List three fruits.")
    forks = s.fork(3)
    for i, f in enumerate(forks):
        f += lm.assistant(f"Fruit {i}:" + lm.gen("fruit", max_tokens=4))
    forks.join()


def test_tree_view_matches_the_snapshot(runtime, engine) -> None:
    forked.run(backend=runtime, temperature=0)
    wait_idle(engine)
    view = RadixTreeView(runtime, live=False)
    nodes = [n for n in engine.snapshot()["nodes"] if n["parent"] is not None]
    assert view.num_nodes == len(nodes) > 3
    assert view.num_tokens == sum(n["num_tokens"] for n in nodes)
    assert view.num_locked == 0 and len(view.nodes) == len(nodes) + 1  # + the root
    html = view._repr_html_()
    assert html.count('class="lmnb-node') == min(len(nodes) + 1, 60) and "<svg" in html
    assert "Fruit" in html  # node text, in the labels or the hover titles


def test_large_trees_collapse_to_the_busiest_paths(runtime, engine) -> None:
    view = RadixTreeView(engine, max_nodes=3, live=False)
    total = len(engine.snapshot()["nodes"])
    assert view.num_hidden == total - 3
    assert f"{total - 3} nodes hidden" in view.html


def test_stats_view_matches_stats(runtime, engine) -> None:
    wait_idle(engine)
    view = CacheStatsView(runtime, live=False)
    st = engine.stats()
    assert view.hit_rate == st["hit_rate"] and view.cached_tokens == st["cached_tokens"]
    assert view.computed_prompt_tokens == st["prompt_tokens"] - st["cached_tokens"]
    assert view.free_slots + view.evictable_slots + view.in_use_slots == st["capacity"]
    assert view.decode_steps == st["decode_steps"] > 0
    forked.run(backend=runtime, temperature=0)  # the same program again: its prompts hit
    wait_idle(engine)
    view.refresh()
    assert view.recent_hit_rate > 0 and len(view.history) == 2
    assert "hit rate" in view._repr_html_()


def test_text_view_and_dashboard(runtime, engine) -> None:
    state = forked.run(backend=runtime, temperature=0)
    text = TextView(state, live=False)
    assert text.done and "List three fruits." in text.text and not text.error
    board = Dashboard(runtime, state=state, live=False)
    assert [type(v).__name__ for v in board.views] == ["TokenStreamView", "TraceView",
                                                       "RadixTreeView", "CacheStatsView"]
    html = board._repr_html_()
    assert html.count("<svg") == 2 and "lmnb-tok-computed" in html and "hit rate" in html


def test_live_views_follow_a_running_program(runtime, engine) -> None:
    lm.flush_cache(runtime)
    wait_idle(engine)
    view = RadixTreeView(runtime, live=True)
    before = view.num_nodes
    forked.run(backend=runtime, temperature=0)
    wait_idle(engine)
    nodes = [n for n in engine.snapshot()["nodes"] if n["parent"] is not None]
    deadline = time.time() + 5  # the poller, not this test, brings the view up to date
    while view.num_nodes != len(nodes) and time.time() < deadline:
        time.sleep(0.1)
    assert view.num_nodes == len(nodes) > before
    view.poller.stop()


def test_poller_refreshes_at_most_five_times_a_second() -> None:
    class Counter:
        comm = object()
        calls = 0

        def refresh(self):
            self.calls += 1
            assert threading.current_thread().name == "lmnb-view"

    view = Counter()
    poller = Poller(view, hz=50)  # asked for 50 Hz, capped at 5
    time.sleep(1.1)
    poller.stop()
    assert 2 <= view.calls <= 6


def test_poller_ends_when_done() -> None:
    class Stub:
        comm = object()

        def refresh(self):
            pass

    poller = Poller(Stub(), done=lambda: True, linger=0.0)
    poller.thread.join(timeout=3)
    assert not poller.thread.is_alive()


def test_poller_stops_quietly_when_its_source_fails(monkeypatch) -> None:
    """A remote runtime that went away: the view keeps its last picture, no thread traceback."""
    raised = []
    monkeypatch.setattr(threading, "excepthook", raised.append)

    class Gone:
        comm = object()

        def refresh(self):
            raise ConnectionError("cannot reach http://127.0.0.1:9")

    view = Gone()  # held: the poller holds its view weakly
    poller = Poller(view)
    poller.thread.join(timeout=3)
    assert not poller.thread.is_alive() and not raised
    assert isinstance(poller.error, ConnectionError)


def _node(nid, parent, num_tokens=5, hits=0, lock=0, text="x"):
    return {"id": nid, "parent": parent, "num_tokens": num_tokens, "lock": lock,
            "last_access": nid, "num_hits": hits, "text": text, "token_ids": []}


def test_tree_layout_keeps_a_connected_busiest_tree() -> None:
    nodes = [_node(0, None, 0), _node(1, 0, 50, hits=3), _node(2, 0, 2), _node(3, 1, 40),
             _node(4, 1, 1), _node(5, 3, 30, lock=1, text="a long node text " * 5)]
    kept = busiest(nodes, 4)
    assert kept == {0, 1, 3, 5}
    svg, hidden = tree_svg(nodes, 4)
    assert hidden == 2 and "2 nodes hidden" in svg
    assert svg.count("lmnb-node-locked") == 1
    assert "a long node text a long node text" in svg  # full text on hover (<title>)
    assert busiest(nodes, 4, must={4}) == {0, 1, 4, 3}  # a flashing node and its path first
    assert 4 in busiest(nodes, 2, must={4})  # even past the budget


def test_tree_labels_show_special_tokens_as_badges_and_prefer_the_words() -> None:
    turn = "<|im_end|>\n<|im_start|>user\nWhich one is the sweetest?"
    assert label_parts(turn) == [("badge", "user"), ("text", "Which one is the sweetest?")]
    assert label_parts("user\nWhich one") == [("badge", "user"), ("text", "Which one")]
    assert label_parts("<|im_end|>\n<|im_start|>assistant\n") == [("badge", "end"),
                                                                  ("badge", "assistant")]
    assert label_parts(" 2 is") == [("text", "2 is")]
    assert label_parts("\n ") == [("text", "⏎␣")]  # whitespace only: shown, not blank
    assert short(turn) == "⟨user⟩ Which one is…"  # cut to the box's room
    nodes = [_node(0, None, 0), _node(1, 0, 19, text=turn)]
    svg, _ = tree_svg(nodes)
    assert 'class="lmnb-badge"' in svg and ">user</text>" in svg and "im_end" not in svg.split(
        "</title>")[1]  # the raw specials only in the tooltip
    assert 'style="--r:1.00"' in svg  # the recency the theme's CSS mixes its fill from


def test_assets_ship_in_the_package_and_load_nothing_from_the_network() -> None:
    files = sorted(STATIC.glob("*"))
    assert {f.suffix for f in files} == {".js", ".css"}
    for f in files:
        assert not re.search(r"https?://|//cdn|@import", f.read_text()), f
    assert str(RadixTreeView._esm) == (STATIC / "html_view.js").read_text()


def test_a_programs_dashboard_stops_refreshing_once_done(runtime, engine) -> None:
    state = forked.run(backend=runtime, temperature=0)
    wait_idle(engine)
    board = Dashboard(runtime, state=state)
    assert all(v.poller is None for v in board.views)  # one poller reads them all together
    board.poller.thread.join(timeout=5)
    assert not board.poller.thread.is_alive() and board.frozen
    assert board.button.disabled and board.button.description == "done"


def test_tree_view_skips_the_snapshot_when_nothing_moved(runtime, engine, monkeypatch) -> None:
    wait_idle(engine)
    view = RadixTreeView(engine, live=False)
    monkeypatch.setattr(engine, "snapshot", lambda: pytest.fail("snapshot taken"))
    view.refresh()
