"""Property tests of the radix cache over a real (tiny) KV pool, against a naive reference.

The reference is a flat dict {prefix tuple: slot}: one entry per cached token position. It is
prefix-closed (evicting a leaf only drops suffixes), so the longest cached prefix of ids is the
largest k with ids[:k] in it. Random operations (insert, match with and without split, lock,
unlock, evict, flush, and request lifecycles that mirror `Scheduler._cache_prefix`) run against
the cache, and every step re-checks the tree from scratch: contents, slot ownership, size
accounting, lock counts and LRU metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lmnb.runtime.kv_pool import KVPool
from lmnb.runtime.radix_cache import Node, RadixCache

ALPHABET = 4  # token ids 0..3: prefixes share often and diverge inside nodes
MAX_LEN = 12
NUM_SLOTS = 65  # capacity 64: small enough that inserts run into eviction
MAX_LOCKS = 6
MAX_REQUESTS = 3

ids_st = st.lists(st.integers(0, ALPHABET - 1), min_size=1, max_size=MAX_LEN)
query_st = st.lists(st.integers(0, ALPHABET - 1), min_size=0, max_size=MAX_LEN + 2)
# None: fresh ids; an int: a sequence seen before (odd: with the fresh ids appended), so that
# whole sequences repeat and concurrent requests share prompts
reuse_st = st.one_of(st.none(), st.integers(0, 1000))
Prefix = tuple[int, ...]


def make_pool(num_slots: int = NUM_SLOTS) -> KVPool:
    return KVPool(1, num_slots, 1, 2, torch.float32, torch.device("cpu"))


@dataclass
class Req:
    """A request as the scheduler sees it: slots[:tree_len] are the tree's, the rest its own."""

    ids: list[int]
    slots: list[int]
    node: Node
    tree_len: int
    kv_len: int


@dataclass
class TreeView:
    """The tree read from scratch: position -> slot, and each node's end prefix."""

    slot_of: dict[Prefix, int]
    end_of: dict[Node, Prefix]


def read_tree(cache: RadixCache) -> TreeView:
    """Walk the tree from the root, checking its structure on the way."""
    slot_of: dict[Prefix, int] = {}
    end_of: dict[Node, Prefix] = {cache.root: ()}
    stack: list[Node] = [cache.root]
    while stack:
        node = stack.pop()
        for first, child in node.children.items():
            where = f"node {child.id} under {end_of[node]}"
            assert child.key, f"{where}: empty key"
            assert child.key[0] == first, f"{where}: keyed by {first}, key starts {child.key[0]}"
            assert len(child.slots) == len(child.key), f"{where}: {child.slots} vs {child.key}"
            assert child.parent is node, f"{where}: wrong parent pointer"
            assert child.lock >= 0, f"{where}: negative lock {child.lock}"
            assert child not in end_of, f"{where}: reachable twice"
            prefix = end_of[node]
            for token, slot in zip(child.key, child.slots):
                prefix = (*prefix, token)
                assert prefix not in slot_of, f"{where}: position {prefix} held twice"
                slot_of[prefix] = slot
            end_of[child] = prefix
            stack.append(child)
    return TreeView(slot_of, end_of)


def longest(ref: dict[Prefix, int], ids: list[int]) -> int:
    k = 0
    while k < len(ids) and tuple(ids[: k + 1]) in ref:
        k += 1
    return k


def prefixes(p: Prefix) -> set[Prefix]:
    return {p[:k] for k in range(1, len(p) + 1)}


class RadixCacheMachine(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        self.pool = make_pool()
        self.cache = RadixCache(self.pool)
        self.ref: dict[Prefix, int] = {}
        self.touch: dict[Prefix, int] = {}  # position -> tick of the last op whose path used it
        self.tick = 0  # mirrors the cache's clock: one tick per match_prefix/insert call
        self.locks: list[tuple[Node, Prefix]] = []  # held by the lock rule
        self.reqs: list[Req] = []
        self.num_evicted = 0
        self.seen: list[list[int]] = []

    def pick(self, reuse: int | None, ids: list[int]) -> list[int]:
        if reuse is None or not self.seen:
            return ids
        base = self.seen[reuse % len(self.seen)]
        return (base + ids)[:MAX_LEN] if reuse % 2 else list(base)

    # ---- wrappers that check each cache call against the reference ------------------------

    def held(self) -> list[tuple[Node, Prefix]]:
        reqs = [(r.node, tuple(r.ids[: r.tree_len])) for r in self.reqs]
        return self.locks + reqs

    def _touch(self, ids: list[int], k: int) -> None:
        self.tick += 1
        for j in range(1, k + 1):
            self.touch[tuple(ids[:j])] = self.tick

    def _match(self, ids: list[int], split: bool) -> tuple[list[int], Node]:
        k = longest(self.ref, ids)
        assert self.cache.prefix_len(ids) == k, f"prefix_len({ids})"
        num_nodes = len(read_tree(self.cache).end_of)
        slots, node = self.cache.match_prefix(ids, split=split)
        self._touch(ids, k)
        want = [self.ref[tuple(ids[:j])] for j in range(1, k + 1)]
        assert slots == want, f"match_prefix({ids}, split={split}): {slots} != {want}"
        view = read_tree(self.cache)
        end = view.end_of.get(node)
        assert end is not None, f"match_prefix({ids}) returned a detached node"
        if split:
            assert end == tuple(ids[:k]), f"split match of {ids} ends at {end}, not {ids[:k]}"
        else:
            assert len(view.end_of) == num_nodes, "match_prefix(split=False) changed the tree"
            assert end == tuple(ids[: len(end)]) and len(end) <= k
            if len(end) < k:  # the match ends inside the next child, not past it
                child = node.children[ids[len(end)]]
                assert len(end) + len(child.key) > k
        return slots, node

    def _insert(self, ids: list[int], slots: list[int]) -> int:
        k = longest(self.ref, ids)
        seq = self.cache.events[-1]["seq"] if self.cache.events else 0
        present = self.cache.insert(ids, slots)
        self._touch(ids, len(ids))
        self.seen.append(list(ids))
        assert present == k, f"insert({ids}) returned {present}, reference has {k} cached"
        for j in range(k + 1, len(ids) + 1):
            self.ref[tuple(ids[:j])] = slots[j - 1]
        inserts = [e for e in self.cache.events_since(seq) if e["type"] == "insert"]
        assert len(inserts) == (1 if k < len(ids) else 0), inserts
        if inserts:
            assert inserts[0]["num_tokens"] == len(ids) - k
        return present

    def _evict(self, num_tokens: int, flush: bool = False) -> int:
        free_before = set(self.pool.free_slots())
        evictable_before = self.cache.evictable_size
        seq = self.cache.events[-1]["seq"] if self.cache.events else 0
        freed = self.cache.flush() if flush else self.cache.evict(num_tokens)
        free_after = self.pool.free_slots()
        newly = set(free_after) - free_before
        assert len(free_after) == len(free_before) + freed == len(free_before) + len(newly)
        assert freed >= min(num_tokens, evictable_before), "evict freed less than it could"
        if num_tokens <= 0:
            assert freed == 0
        else:  # it stops after the leaf that reaches num_tokens
            assert freed < num_tokens + MAX_LEN
        owner = {slot: p for p, slot in self.ref.items()}
        assert newly <= owner.keys(), f"evict freed slots the tree did not hold: {newly}"
        removed = {owner[s] for s in newly}
        protected = set().union(*(prefixes(p) for _, p in self.held()))
        assert not removed & protected, f"evicted locked positions {removed & protected}"
        for p in removed:
            del self.ref[p]
            self.touch.pop(p, None)
        self.num_evicted += freed
        assert self.cache.num_evicted_tokens == self.num_evicted
        events = self.cache.events_since(seq)
        assert sum(e["num_tokens"] for e in events if e["type"] == "evict") == freed
        return freed

    def _alloc(self, n: int) -> list[int] | None:
        """As Scheduler._alloc: evict what is missing, then try again."""
        slots = self.pool.alloc(n)
        if slots is None:
            self._evict(n - self.pool.num_free)
            slots = self.pool.alloc(n)
        return slots

    def _cache_prefix(self, req: Req) -> None:
        """As Scheduler._cache_prefix: insert, free the duplicates, adopt slots, move the lock."""
        if req.kv_len == req.tree_len:
            return
        ids, slots = req.ids[: req.kv_len], req.slots[: req.kv_len]
        present = self._insert(ids, slots)
        assert present >= req.tree_len, "the locked prefix was not in the tree"
        self.pool.free(slots[req.tree_len : present])
        tree_slots, node = self._match(ids, split=True)
        assert len(tree_slots) == len(ids)
        assert tree_slots[: req.tree_len] == slots[: req.tree_len]
        req.slots[req.tree_len : req.kv_len] = tree_slots[req.tree_len :]
        self.cache.inc_lock(node)
        self.cache.dec_lock(req.node)
        req.node, req.tree_len = node, req.kv_len

    # ---- rules ----------------------------------------------------------------------------

    @rule(batch=st.lists(st.tuples(reuse_st, ids_st), min_size=1, max_size=4))
    def insert(self, batch: list[tuple[int | None, list[int]]]) -> None:
        for reuse, fresh in batch:
            ids = self.pick(reuse, fresh)
            slots = self._alloc(len(ids))
            if slots is None:
                return  # everything is locked or in flight
            present = self._insert(ids, slots)
            self.pool.free(slots[:present])  # the tree kept its own slots for these

    @rule(reuse=reuse_st, ids=query_st, split=st.booleans())
    def match(self, reuse: int | None, ids: list[int], split: bool) -> None:
        self._match(self.pick(reuse, ids), split)

    @precondition(lambda self: len(self.locks) < MAX_LOCKS)
    @rule(reuse=reuse_st, ids=query_st)
    def lock(self, reuse: int | None, ids: list[int]) -> None:
        ids = self.pick(reuse, ids)
        slots, node = self._match(ids, split=True)
        self.cache.inc_lock(node)
        self.locks.append((node, tuple(ids[: len(slots)])))

    @precondition(lambda self: self.locks)
    @rule(i=st.integers(0, MAX_LOCKS))
    def unlock(self, i: int) -> None:
        node, _ = self.locks.pop(i % len(self.locks))
        self.cache.dec_lock(node)

    @rule(kind=st.sampled_from(["some", "lru", "flush"]), num_tokens=st.integers(0, 30))
    def evict(self, kind: str, num_tokens: int) -> None:
        if kind == "some":
            self._evict(num_tokens)
        elif kind == "lru":
            self.evict_one_lru()
        else:
            self.flush()

    def evict_one_lru(self) -> None:
        view = read_tree(self.cache)
        leaves = [n for n in view.end_of if n.parent and not n.children and n.lock == 0]
        touch = dict(self.touch)
        freed = self._evict(1)
        gone = [n for n in leaves if n.parent.children.get(n.key[0]) is not n]
        assert len(gone) == (1 if leaves else 0), f"evict(1) removed {len(gone)} leaves"
        if not leaves:
            assert freed == 0
            return
        lru = min(leaves, key=lambda n: (n.last_access, n.id))
        assert gone == [lru], f"evict(1) took {view.end_of[gone[0]]}, not {view.end_of[lru]}"
        assert freed == len(lru.key), f"evict(1) freed {freed}, the LRU leaf has {len(lru.key)}"
        # Independent of last_access: the evicted leaf's last use is no later than the last use
        # of any token on another unlocked leaf's path (an op that enters a node uses its first
        # token, so that bounds when the other leaf was last used).
        end = view.end_of[lru]
        last_use = max(touch.get(end[:j], 0) for j in range(len(end) - len(lru.key) + 1,
                                                            len(end) + 1))
        for other in leaves:
            other_end = view.end_of[other]
            bound = max(touch.get(other_end[:j], 0) for j in range(1, len(other_end) + 1))
            assert last_use <= bound, f"evicted {end} (used at {last_use}) before {other_end}"

    def flush(self) -> None:
        self._evict(self.cache.evictable_size, flush=True)
        assert self.cache.evictable_size == 0
        protected = set().union(*(prefixes(p) for _, p in self.held()))
        assert set(self.ref) == protected, "flush kept unlocked tokens or dropped locked ones"

    @precondition(lambda self: len(self.reqs) < MAX_REQUESTS)
    @rule(reuse=reuse_st, ids=ids_st)
    def begin_request(self, reuse: int | None, ids: list[int]) -> None:
        """As Scheduler._admit + allocation: lock the cached prefix, allocate the rest."""
        ids = self.pick(reuse, ids)
        self.seen.append(ids)
        matched, node = self._match(ids[: len(ids) - 1], split=True)
        self.cache.inc_lock(node)
        own = self._alloc(len(ids) - len(matched))
        if own is None:
            self.cache.dec_lock(node)
            return
        n = len(matched)
        self.reqs.append(Req(ids, matched + own, node, tree_len=n, kv_len=n))

    @precondition(lambda self: self.reqs)
    @rule(i=st.integers(0, MAX_REQUESTS), num_tokens=st.integers(1, MAX_LEN), share=st.booleans())
    def extend_request(self, i: int, num_tokens: int, share: bool) -> None:
        """As Scheduler.commit: tokens got their K/V; extend steps share them at once, decode
        steps only when the request is released."""
        req = self.reqs[i % len(self.reqs)]
        req.kv_len = min(len(req.ids), req.kv_len + num_tokens)
        if share:
            self._cache_prefix(req)

    @precondition(lambda self: self.reqs)
    @rule(i=st.integers(0, MAX_REQUESTS))
    def release_request(self, i: int) -> None:
        """As Scheduler._release_slots (finish or retract): cache what was computed, unlock."""
        req = self.reqs.pop(i % len(self.reqs))
        self._cache_prefix(req)
        self.cache.dec_lock(req.node)
        self.pool.free(req.slots[req.kv_len :])  # never computed

    # ---- invariants -----------------------------------------------------------------------

    @invariant()
    def tree_matches_reference(self) -> None:
        view = read_tree(self.cache)
        missing = self.ref.keys() - view.slot_of.keys()
        extra = view.slot_of.keys() - self.ref.keys()
        assert not missing and not extra, f"tree lacks {missing}, has extra {extra}"
        wrong = {p for p, s in self.ref.items() if view.slot_of[p] != s}
        assert not wrong, f"positions with the wrong slot: {wrong}"
        for node, p in self.held():
            assert view.end_of.get(node) == p, f"locked node for {p} moved or was evicted"
            assert prefixes(p) <= self.ref.keys(), f"locked prefix {p} is not matchable"

    @invariant()
    def every_slot_has_one_owner(self) -> None:
        owners: dict[int, list[str]] = {}
        for s in self.pool.free_slots():
            owners.setdefault(s, []).append("free")
        for node in self.cache._nodes():
            for s in node.slots:
                owners.setdefault(s, []).append(f"node {node.id}")
        for r in self.reqs:
            for s in r.slots[r.tree_len :]:
                owners.setdefault(s, []).append(f"request {r.ids}")
        capacity = set(range(1, self.pool.capacity + 1))
        lost, bad = capacity - set(owners), set(owners) - capacity
        assert not lost and not bad, f"slots owned by nobody: {lost}, not usable: {bad}"
        shared = {s: o for s, o in owners.items() if len(o) > 1}
        assert not shared, f"slots with several owners: {shared}"

    @invariant()
    def sizes_add_up(self) -> None:
        nodes = self.cache._nodes()
        evictable = sum(len(n.key) for n in nodes if n.lock == 0)
        protected = sum(len(n.key) for n in nodes if n.lock > 0)
        assert (self.cache.evictable_size, self.cache.protected_size) == (evictable, protected)
        in_flight = sum(len(r.slots) - r.tree_len for r in self.reqs)
        total = self.pool.num_free + evictable + protected + in_flight
        assert total == self.pool.capacity, f"{total} slots accounted of {self.pool.capacity}"
        assert self.cache.total_size == len(self.ref)
        snap = self.cache.snapshot()  # what the widgets read
        assert sum(n["num_tokens"] for n in snap["nodes"]) == len(self.ref)
        assert (snap["evictable_size"], snap["protected_size"]) == (evictable, protected)

    @invariant()
    def lock_counts_follow_holders(self) -> None:
        view = read_tree(self.cache)
        held = [p for _, p in self.held()]
        for node, end in view.end_of.items():
            if node is self.cache.root:
                continue
            want = sum(1 for p in held if p[: len(end)] == end)
            assert node.lock == want, f"node {end} has lock {node.lock}, holders say {want}"

    @invariant()
    def lru_clock_never_forgets_a_use(self) -> None:
        view = read_tree(self.cache)
        for node, end in view.end_of.items():
            if node is self.cache.root:
                continue
            start = len(end) - len(node.key)
            last_use = max(self.touch.get(end[:j], 0) for j in range(start + 1, len(end) + 1))
            assert last_use <= node.last_access <= self.tick, f"node {end}"
            if node.parent is not self.cache.root:
                assert node.parent.last_access >= node.last_access, f"node {end} newer than parent"


RadixCacheMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRadixCache = RadixCacheMachine.TestCase


# ---- a few fixed scenarios, readable on their own ----------------------------------------


def fill(cache: RadixCache, ids: list[int]) -> list[int]:
    slots = cache.pool.alloc(len(ids))
    assert slots is not None
    present = cache.insert(ids, slots)
    cache.pool.free(slots[:present])
    return cache.match_prefix(ids, split=False)[0]


def test_evict_takes_least_recently_used_leaf_first() -> None:
    cache = RadixCache(make_pool())
    for first in (0, 1, 2):
        fill(cache, [first, 3, 3])
    cache.match_prefix([1, 3, 3])
    cache.match_prefix([0, 3])  # splits [0, 3, 3] into [0, 3] + [3]; both count as used now
    gone = []
    while cache.evict(1):
        left = {first for first in (0, 1, 2) if cache.prefix_len([first]) == 1}
        gone += sorted({0, 1, 2} - left - set(gone))
    assert gone == [2, 1, 0]
    assert cache.total_size == 0 and cache.pool.num_free == cache.pool.capacity


def test_split_match_keeps_a_lock_on_both_halves() -> None:
    cache = RadixCache(make_pool())
    fill(cache, [0, 1, 2, 3])
    slots, node = cache.match_prefix([0, 1, 2, 3])
    cache.inc_lock(node)
    _, mid = cache.match_prefix([0, 1])  # splits the locked node
    assert mid.lock == 1 and node.lock == 1 and node.parent is mid
    assert cache.flush() == 0
    assert cache.match_prefix([0, 1, 2, 3], split=False)[0] == slots
    cache.dec_lock(node)
    assert (cache.evictable_size, cache.protected_size) == (4, 0)
    assert cache.flush() == 4


@pytest.mark.parametrize("split", [True, False])
def test_match_inside_a_node(split: bool) -> None:
    cache = RadixCache(make_pool())
    slots = fill(cache, [2, 2, 1, 0])
    got, node = cache.match_prefix([2, 2, 3], split=split)
    assert got == slots[:2]
    assert (len(node.key) == 2) if split else (node is cache.root)
