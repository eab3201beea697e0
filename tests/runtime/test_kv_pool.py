"""KVPool: allocation is all-or-nothing, slot 0 is never handed out, double frees raise."""

from __future__ import annotations

import pytest
import torch

from lmnb.runtime.kv_pool import KVPool, ReqToToken

CPU = torch.device("cpu")


def make_pool(num_slots: int = 8) -> KVPool:
    return KVPool(2, num_slots, 1, 4, torch.float32, torch.device("cpu"))


def test_alloc_is_all_or_nothing_and_skips_the_sink() -> None:
    pool = make_pool()
    taken = pool.alloc(7)
    assert sorted(taken) == list(range(1, 8))
    assert pool.alloc(1) is None
    pool.free(taken[:3])
    assert pool.alloc(4) is None and pool.num_free == 3


def test_double_free_and_bad_slots_raise_without_changing_anything() -> None:
    pool = make_pool()
    taken = pool.alloc(3)
    pool.free(taken[:1])
    for bad in ([taken[0]], [taken[1], taken[0]], [0], [8]):
        with pytest.raises(RuntimeError, match="freed twice or out of range"):
            pool.free(bad)
    assert pool.num_free == 5
    pool.free(taken[1:])
    assert sorted(pool.free_slots()) == list(range(1, 8))


def test_set_many_is_the_sets_it_stands_for() -> None:
    """A decode step writes every request's new slot in one indexed write; the table then
    holds what one `set` per request would have written."""
    one, many = ReqToToken(4, 16, CPU), ReqToToken(4, 16, CPU)
    writes = [(2, 5, [7]), (0, 0, [3, 4, 5]), (3, 15, [9]), (1, 2, [])]
    for row, start, slots in writes:
        one.set(row, start, slots)
    many.set_many(writes)
    many.set_many([])
    assert torch.equal(one.table, many.table)
    assert many.get(0, 3) == [3, 4, 5] and many.get(2, 6)[5] == 7 and many.get(3, 16)[15] == 9
