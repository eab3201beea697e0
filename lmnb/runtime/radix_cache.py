"""The radix cache (RadixAttention): token ids -> KV slots, shared across requests.

Owns the tree, its lock counts, LRU eviction and hit statistics, and an event stream (insert,
split, hit, evict, flush) for views and tests. Slots that the tree holds belong to it; the
caller frees the duplicates `insert` reports. Knows nothing of the model, requests or text.

Invariants: every non-root node has a non-empty key and len(slots) == len(key); a node's lock
count is the number of running requests whose matched prefix passes through it; only unlocked
leaves are evicted; evictable_size + protected_size == tokens held by the tree.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from lmnb.runtime.kv_pool import KVPool


@dataclass(eq=False)
class Node:
    id: int
    parent: Node | None
    key: list[int] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    children: dict[int, Node] = field(default_factory=dict)
    lock: int = 0
    last_access: int = 0
    num_hits: int = 0


class RadixCache:
    def __init__(self, pool: KVPool, disabled: bool = False, max_events: int = 20000) -> None:
        self.pool = pool
        self.disabled = disabled
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._event_seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._tick = itertools.count(1)
        self.root = Node(id=0, parent=None, lock=1)
        self.evictable_size = 0
        self.protected_size = 0
        # cumulative statistics (prompt tokens seen by admitted requests, and how many hit)
        self.num_prompt_tokens = 0
        self.num_cached_tokens = 0
        self.num_evicted_tokens = 0

    # ---- matching -------------------------------------------------------------------------

    def match_prefix(self, ids: list[int], split: bool = True) -> tuple[list[int], Node]:
        """Slots of the longest cached prefix of ids and the node where it ends.

        With split=True a match that ends inside a node splits it, so the returned node covers
        exactly the matched prefix (and can be locked). Touches last_access along the path.
        """
        if self.disabled:
            return [], self.root
        node, slots, i = self.root, [], 0
        tick = next(self._tick)
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                break
            n = _common_len(child.key, ids, i)
            if n < len(child.key):
                if split:  # only the used head counts as recently used
                    child = self._split(child, n)
                    child.last_access = tick
                    slots.extend(child.slots)
                    node = child
                else:  # unsplit: the whole node counts as used
                    child.last_access = tick
                    slots.extend(child.slots[:n])
                break
            child.last_access = tick
            slots.extend(child.slots)
            node, i = child, i + n
        return slots, node

    def prefix_len(self, ids: list[int]) -> int:
        """Length of the cached prefix of ids, with no split and no LRU touch."""
        return self.locate(ids)[1]

    def locate(self, ids: list[int]) -> tuple[Node, int]:
        """(node, length) of ids' cached prefix, with no split and no LRU touch: the node is the
        last one matched whole, or the one the match ends inside."""
        node, i = self.root, 0
        while i < len(ids) and not self.disabled:
            child = node.children.get(ids[i])
            if child is None:
                break
            n = _common_len(child.key, ids, i)
            node, i = child, i + n
            if n < len(child.key):
                break
        return node, i

    def _split(self, child: Node, n: int) -> Node:
        """Cut child's key at n: a new node holds the first n tokens, child keeps the rest."""
        parent = child.parent
        assert parent is not None and 0 < n < len(child.key)
        mid = Node(
            id=next(self._ids),
            parent=parent,
            key=child.key[:n],
            slots=child.slots[:n],
            lock=child.lock,
            last_access=child.last_access,
            num_hits=child.num_hits,
        )
        parent.children[mid.key[0]] = mid
        child.key, child.slots, child.parent = child.key[n:], child.slots[n:], mid
        mid.children[child.key[0]] = child
        self._emit("split", node=mid.id, child=child.id, num_tokens=n)
        return mid

    # ---- insertion ------------------------------------------------------------------------

    def insert(self, ids: list[int], slots: list[int]) -> int:
        """Add ids -> slots; returns how many leading tokens were already cached.

        The tree keeps its own slots for that prefix; the caller frees slots[:returned] that
        differ from the tree's (they are duplicates) and may use match_prefix to re-read them.
        """
        assert len(ids) == len(slots)
        if self.disabled:
            return 0
        node, i = self.root, 0
        tick = next(self._tick)
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                new = Node(id=next(self._ids), parent=node, key=ids[i:], slots=slots[i:],
                           last_access=tick)
                node.children[ids[i]] = new
                self.evictable_size += len(new.key)  # a new leaf holds no lock
                self._emit("insert", node=new.id, parent=node.id, num_tokens=len(new.key))
                return i
            n = _common_len(child.key, ids, i)
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = tick
            node, i = child, i + n
        return i

    # ---- locks ----------------------------------------------------------------------------

    def inc_lock(self, node: Node) -> None:
        while node is not self.root:
            if node.lock == 0:
                self.evictable_size -= len(node.key)
                self.protected_size += len(node.key)
            node.lock += 1
            node = node.parent  # type: ignore[assignment]

    def dec_lock(self, node: Node) -> None:
        while node is not self.root:
            assert node.lock > 0, "dec_lock below zero"
            node.lock -= 1
            if node.lock == 0:
                self.evictable_size += len(node.key)
                self.protected_size -= len(node.key)
            node = node.parent  # type: ignore[assignment]

    # ---- eviction -------------------------------------------------------------------------

    def evict(self, num_tokens: int) -> int:
        """Free at least num_tokens slots from least-recently-used unlocked leaves if possible."""
        heap = [(n.last_access, n.id, n) for n in self._nodes() if _evictable_leaf(n)]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            freed += self._remove_leaf(node)
            parent = node.parent
            if parent is not None and parent is not self.root and _evictable_leaf(parent):
                heapq.heappush(heap, (parent.last_access, parent.id, parent))
        self.num_evicted_tokens += freed
        return freed

    def _remove_leaf(self, node: Node) -> int:
        parent = node.parent
        assert parent is not None
        del parent.children[node.key[0]]
        self.pool.free(node.slots)
        self.evictable_size -= len(node.key)
        self._emit("evict", node=node.id, num_tokens=len(node.key))
        return len(node.key)

    def flush(self) -> int:
        """Evict everything that is not locked; returns the number of freed slots."""
        freed = self.evict(self.evictable_size)
        self._emit("flush", num_tokens=freed)
        return freed

    # ---- statistics, snapshot, events -----------------------------------------------------

    def record_admit(self, node: Node, prefix_len: int, prompt_len: int) -> None:
        """A request was admitted with prefix_len of its prompt_len tokens already cached."""
        self.num_prompt_tokens += prompt_len
        self.num_cached_tokens += prefix_len
        if prefix_len > 0:
            path = []
            while node is not self.root and node is not None:
                node.num_hits += 1
                path.append(node.id)
                node = node.parent  # type: ignore[assignment]
            self._emit("hit", nodes=path[::-1], num_tokens=prefix_len)

    @property
    def hit_rate(self) -> float:
        return self.num_cached_tokens / self.num_prompt_tokens if self.num_prompt_tokens else 0.0

    @property
    def total_size(self) -> int:
        return self.evictable_size + self.protected_size

    def snapshot(self) -> dict[str, Any]:
        nodes = [
            {
                "id": n.id,
                "parent": n.parent.id if n.parent is not None else None,
                "token_ids": list(n.key),
                "num_tokens": len(n.key),
                "lock": n.lock if n is not self.root else 0,
                "last_access": n.last_access,
                "num_hits": n.num_hits,
            }
            for n in self._nodes(include_root=True)
        ]
        return {
            "nodes": nodes,
            "evictable_size": self.evictable_size,
            "protected_size": self.protected_size,
            "num_prompt_tokens": self.num_prompt_tokens,
            "num_cached_tokens": self.num_cached_tokens,
            "hit_rate": self.hit_rate,
            "last_event": self.events[-1]["seq"] if self.events else 0,
        }

    def events_since(self, seq: int) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e["seq"] > seq]

    def _emit(self, kind: str, **data: Any) -> None:
        self.events.append({"seq": next(self._event_seq), "type": kind, **data})

    def _nodes(self, include_root: bool = False) -> list[Node]:
        out, stack = [], [self.root]
        while stack:
            node = stack.pop()
            if node is not self.root or include_root:
                out.append(node)
            stack.extend(node.children.values())
        return out


def _common_len(key: list[int], ids: list[int], start: int) -> int:
    n = min(len(key), len(ids) - start)
    i = 0
    while i < n and key[i] == ids[start + i]:
        i += 1
    return i


def _evictable_leaf(node: Node) -> bool:
    return not node.children and node.lock == 0 and node.parent is not None
