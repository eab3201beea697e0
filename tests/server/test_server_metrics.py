"""/metrics (Prometheus text), /stats, /snapshot and /events: what remote views read."""

from __future__ import annotations

import re

import httpx

from lmnb.runtime import Engine

SAMPLE = re.compile(r'^(lmnb_[a-z_]+)\{model="[^"]*"\} (-?[0-9.e+-]+|nan|inf)$')


def test_metrics_are_prometheus_text(client: httpx.Client, settled: Engine) -> None:
    for _ in range(2):  # the second hits the cache
        client.post("/generate", json={"text": "Metrics, please!",
                                       "sampling_params": {"max_new_tokens": 2}})
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    values, types = {}, {}
    for line in r.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif not line.startswith("#"):
            match = SAMPLE.match(line)
            assert match, line
            values[match.group(1)] = float(match.group(2))
    assert set(values) == set(types)
    for name in ("lmnb_requests_total", "lmnb_prompt_tokens_total", "lmnb_cached_tokens_total",
                 "lmnb_generated_tokens_total"):
        assert types[name] == "counter" and values[name] > 0
    for name in ("lmnb_cache_hit_rate", "lmnb_num_waiting", "lmnb_num_running",
                 "lmnb_pool_usage", "lmnb_pool_free_slots"):
        assert types[name] == "gauge"
    assert 0 <= values["lmnb_cache_hit_rate"] <= 1 and 0 <= values["lmnb_pool_usage"] <= 1


def test_stats_snapshot_and_events(client: httpx.Client, settled: Engine) -> None:
    client.post("/generate", json={"text": "Snapshot me", "sampling_params": {"max_new_tokens": 1}})
    stats = client.get("/stats").json()
    assert stats["capacity"] == settled.stats()["capacity"] and stats["num_requests"] > 0
    snap = client.get("/snapshot").json()
    assert snap["nodes"] and any("Snapshot me" in n["text"] for n in snap["nodes"])
    events = client.get("/events", params={"since": 0}).json()
    assert isinstance(events, list) and events
    assert client.get("/events", params={"since": "soon"}).status_code == 400
    assert client.get("/events", params={"since": -1}).status_code == 400
