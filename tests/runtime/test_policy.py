"""Scheduling policies over a real radix cache: lpm, dfs-weight, fcfs, and aging."""

from __future__ import annotations

import pytest
import torch

from lmnb.runtime.detokenizer import Detokenizer
from lmnb.runtime.handle import GenerateHandle
from lmnb.runtime.kv_pool import KVPool
from lmnb.runtime.params import SamplingParams
from lmnb.runtime.policy import order
from lmnb.runtime.radix_cache import RadixCache
from lmnb.runtime.req import Req


def make_req(rid: int, ids: list[int], arrival: int = 0) -> Req:
    req = Req(rid, ids, SamplingParams(), GenerateHandle(rid, lambda _: None),
              Detokenizer(lambda _: "", ()))
    req.arrival = arrival
    return req


@pytest.fixture
def cache() -> RadixCache:
    pool = KVPool(1, 256, 1, 2, torch.float32, torch.device("cpu"))
    cache = RadixCache(pool)
    for seq in ([1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9], [7, 7, 7]):
        cache.insert(seq, pool.alloc(len(seq)))
    return cache


def test_fcfs_keeps_arrival_order(cache) -> None:
    reqs = [make_req(i, [7, 7, 7, i], arrival=10 - i) for i in range(4)]
    assert [r.rid for r in order(reqs, cache, "fcfs", 11, None)] == [3, 2, 1, 0]


def test_lpm_puts_the_longest_cached_prefix_first(cache) -> None:
    reqs = [make_req(0, [8, 8]), make_req(1, [1, 2, 3, 4, 5, 0]), make_req(2, [7, 7, 0])]
    assert [r.rid for r in order(reqs, cache, "lpm", 1, None)] == [1, 2, 0]


def test_dfs_weight_groups_requests_of_the_heaviest_subtree(cache) -> None:
    reqs = [make_req(0, [7, 7, 7, 1]), make_req(1, [1, 2, 3, 4, 5, 6, 1]),
            make_req(2, [7, 7, 7, 2]), make_req(3, [7, 7, 7, 3]),
            make_req(4, [1, 2, 3, 9, 9, 1])]
    got = [r.rid for r in order(reqs, cache, "dfs-weight", 1, None)]
    assert got[:3] == [0, 2, 3]  # the [7,7,7] subtree holds three waiting requests
    assert sorted(got) == [0, 1, 2, 3, 4]


def test_dfs_weight_groups_requests_whose_match_ends_inside_a_node() -> None:
    pool = KVPool(1, 256, 1, 2, torch.float32, torch.device("cpu"))
    cache = RadixCache(pool)
    shots = list(range(100, 140))  # a few-shot prefix, cached as part of one longer prompt
    cache.insert(shots + [1, 1, 1], pool.alloc(43))
    cache.insert([5, 5, 5], pool.alloc(3))
    reqs = [make_req(0, [5, 5, 5, 0], arrival=0), make_req(1, shots + [2], arrival=1),
            make_req(2, [8, 8], arrival=2), make_req(3, shots + [3], arrival=3),
            make_req(4, shots + [4], arrival=4)]
    got = [r.rid for r in order(reqs, cache, "dfs-weight", 5, None)]
    # the three sharing the few-shot prefix run together first, the uncached [8, 8] last
    assert got == [1, 3, 4, 0, 2]
    assert sorted(got) == [0, 1, 2, 3, 4]


def test_aging_lets_a_starving_request_go_first(cache) -> None:
    old = make_req(0, [8, 8, 8], arrival=0)  # no cached prefix: lpm ranks it last
    fresh = [make_req(i, [1, 2, 3, 4, 5, 6, i], arrival=90) for i in range(1, 4)]
    assert order([old, *fresh], cache, "lpm", 100, aging_steps=None)[-1] is old
    assert order([old, *fresh], cache, "lpm", 100, aging_steps=50)[0] is old
    assert order([old, *fresh], cache, "lpm", 40, aging_steps=50)[-1] is old
