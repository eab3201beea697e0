"""The event log: ordered, per stream, thread-safe, with replaying subscribers."""

from __future__ import annotations

import threading

import pytest

from lmnb.lang.events import EventLog


def test_record_filter_and_subscribe_with_replay():
    log = EventLog()
    root, child = log.new_stream_id(), log.new_stream_id()
    log.record("start", root, "x", op="gen")
    seen = []
    unsubscribe = log.subscribe(seen.append)
    log.record("tokens", child, "x", text="hi", num_tokens=1)
    unsubscribe()
    log.record("end", root, "x", op="gen")
    assert [e.kind for e in seen] == ["start", "tokens"]
    assert [e.kind for e in log.events(stream_id=root)] == ["start", "end"]
    assert log.events(kind="tokens")[0].to_dict()["data"] == {"text": "hi", "num_tokens": 1}
    times = [e.time for e in log.events()]
    assert times == sorted(times)


def test_unknown_kind_and_frozen_data():
    log = EventLog()
    with pytest.raises(ValueError):
        log.record("nonsense", 0)
    log.record("fork", 0, children=[1])
    with pytest.raises(TypeError):
        log.events()[0].data["children"] = []


def test_concurrent_records_all_arrive():
    log = EventLog()
    threads = [
        threading.Thread(target=lambda: [log.record("tokens", 0) for _ in range(200)])
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(log.events()) == 800
