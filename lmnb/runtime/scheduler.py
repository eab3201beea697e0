"""The scheduler: admission, extend/decode batches under a token budget, and KV bookkeeping.

Owns the waiting queue and the admitted requests, and every movement of slots between the
pool, the radix cache and requests (admit, chunked extend, cache insert, retract, release).
When the pool is full it evicts from the cache, then retracts the newest request (its KV goes
to the cache, it waits and resumes later), then queues. Knows nothing of the model's math,
sampling or text.

Slot accounting: pool.num_free + cache.evictable_size + cache.protected_size + in-flight ==
pool.capacity, where in-flight are the slots of admitted requests not (yet) held by the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmnb.runtime.kv_pool import KVPool, ReqToToken
from lmnb.runtime.policy import check_policy, order
from lmnb.runtime.radix_cache import RadixCache
from lmnb.runtime.req import Req

# A waiting request whose next this-many uncached tokens are being computed in the current
# step for another request is admitted one step later, so it hits them in the cache instead.
IN_BATCH_SHARE_TOKENS = 16


@dataclass
class ExtendItem:
    req: Req
    start: int  # first position computed in this step (== req.kv_len before the step)
    ids: list[int]
    slots: list[int]


@dataclass
class Step:
    is_decode: bool
    items: list[ExtendItem] = field(default_factory=list)


class Scheduler:
    def __init__(
        self,
        pool: KVPool,
        table: ReqToToken,
        cache: RadixCache,
        policy: str = "lpm",
        chunk_tokens: int = 1024,
        max_running: int = 64,
        aging_steps: int | None = 256,
    ) -> None:
        self.pool, self.table, self.cache = pool, table, cache
        self.policy = check_policy(policy)
        self.chunk_tokens = chunk_tokens
        self.max_running = max_running
        self.aging_steps = aging_steps
        self.waiting: list[Req] = []
        self.admitted: list[Req] = []
        self.step_count = 0
        self.num_retracted = 0

    # ---- queue ----------------------------------------------------------------------------

    def add(self, req: Req) -> None:
        req.arrival = self.step_count
        self.waiting.append(req)

    def has_work(self) -> bool:
        return bool(self.waiting or self.admitted)

    def in_flight_slots(self) -> int:
        return sum(r.kv_len - r.tree_len for r in self.admitted)

    # ---- building a step ------------------------------------------------------------------

    def next_step(self) -> Step | None:
        """The next extend step if any request needs one, else a decode step, else None."""
        self.step_count += 1
        for _ in range(len(self.admitted) + 1):
            step = self._extend_step()
            if step is None:
                step = self._decode_step()
            if step is not None:
                return step
            if len(self.admitted) <= 1:
                break
            self.retract(self.admitted[-1])  # nothing fits: make room, newest first
        return None

    def _extend_step(self) -> Step | None:
        budget = self.chunk_tokens
        items: list[ExtendItem] = []
        for req in [r for r in self.admitted if r.in_prefill]:
            item = self._extend_item(req, budget)
            if item is None:
                break
            items.append(item)
            budget -= len(item.ids)
            if budget <= 0:
                return Step(False, items)
        if self.waiting:
            ordered = order(self.waiting, self.cache, self.policy, self.step_count,
                            self.aging_steps)
            fresh: list[Req] = []
            for req in ordered:
                if budget <= 0 or len(self.admitted) >= self.max_running:
                    break
                if self._shares_with(req, fresh):
                    continue  # wait one step: it will hit the prefix this step computes
                if not self._admit(req):
                    break
                item = self._extend_item(req, budget)
                if item is None:
                    self._release_slots(req)
                    self.waiting.insert(0, req)
                    break
                items.append(item)
                fresh.append(req)
                budget -= len(item.ids)
        if items:  # decoding requests ride along instead of waiting for a decode step
            stepping = {id(item.req) for item in items}
            items += self._decode_items(
                [r for r in self.admitted if r.num_pending == 1 and r.output_ids
                 and id(r) not in stepping], budget)
        return Step(False, items) if items else None

    def _decode_items(self, reqs: list[Req], budget: int) -> list[ExtendItem]:
        reqs = reqs[: max(budget, 0)]
        slots = self._alloc(len(reqs)) if reqs else None
        if slots is None:
            return []
        items = [ExtendItem(r, r.kv_len, [r.all_ids[-1]], [s]) for r, s in zip(reqs, slots)]
        self.table.set_many([(i.req.row, i.start, i.slots) for i in items])  # type: ignore[misc]
        return items

    def _shares_with(self, req: Req, fresh: list[Req]) -> bool:
        """Whether req's next uncached tokens are being computed for a request in this step."""
        if self.cache.disabled or not fresh:
            return False
        end = self.cache.prefix_len(req.all_ids) + IN_BATCH_SHARE_TOKENS
        if end >= req.seq_len:
            return False
        head = req.all_ids[:end]
        return any(r.all_ids[:end] == head for r in fresh)

    def _decode_step(self) -> Step | None:
        reqs = [r for r in self.admitted if r.num_pending == 1 and r.output_ids]
        if not reqs:
            return None
        while len(reqs) > 1 and self.pool.num_free + self.cache.evictable_size < len(reqs):
            self.retract(reqs.pop())
        items = self._decode_items(reqs, len(reqs))
        return Step(True, items) if items else None

    def _extend_item(self, req: Req, budget: int) -> ExtendItem | None:
        n = min(req.num_pending, budget)
        slots = self._alloc(n)
        if slots is None:
            return None
        start = req.kv_len
        self.table.set(req.row, start, slots)  # type: ignore[arg-type]
        return ExtendItem(req, start, req.all_ids[start : start + n], slots)

    def _alloc(self, n: int) -> list[int] | None:
        slots = self.pool.alloc(n)
        if slots is None:
            self.cache.evict(n - self.pool.num_free)
            slots = self.pool.alloc(n)
        return slots

    # ---- admission and release ------------------------------------------------------------

    def _admit(self, req: Req) -> bool:
        """Give req a row and its cached prefix (locked); False when no row is free."""
        row = self.table.alloc()
        if row is None:
            return False
        limit = req.seq_len - 1  # at least one token is computed, for its logits
        if req.next_prompt_logprob is not None:  # every missing prompt logprob gets computed
            limit = min(limit, req.next_prompt_logprob)
        slots, node = self.cache.match_prefix(req.all_ids[:limit])
        self.cache.inc_lock(node)
        self.table.set(row, 0, slots)
        req.row, req.last_node = row, node
        req.kv_len = req.tree_len = len(slots)
        if not req.admitted:
            req.admitted = True
            req.cached_len = len(slots)
            self.cache.record_admit(node, len(slots), len(req.prompt_ids))
        self.waiting.remove(req)
        self.admitted.append(req)
        return True

    def commit(self, item: ExtendItem, share: bool) -> None:
        """After a forward: the item's tokens have K/V; with share, insert them in the cache.

        Extend steps share at once (a concurrent request with the same prefix hits it); decode
        steps share when the request finishes or is retracted, to keep each step cheap.
        """
        req = item.req
        req.kv_len = item.start + len(item.ids)
        if share:
            self._cache_prefix(req)

    def discard(self, item: ExtendItem) -> None:
        """After a failed forward: the K/V the request holds outside the tree is not trusted.

        Its slots beyond the tree-held prefix (this step's and any earlier decode step's) go
        back to the pool, so releasing the request inserts nothing: the tree is as it was.
        """
        req = item.req
        if req.row is None:
            return
        end = max(req.kv_len, item.start + len(item.ids))
        self.pool.free(self.table.get(req.row, end)[req.tree_len :])
        self.table.set(req.row, req.tree_len, [0] * (end - req.tree_len))
        req.kv_len = req.tree_len

    def _cache_prefix(self, req: Req) -> None:
        """Insert all_ids[:kv_len] into the tree; adopt the tree's slots; move the lock."""
        if self.cache.disabled or req.kv_len == req.tree_len:
            return
        ids = req.all_ids[: req.kv_len]
        slots = self.table.get(req.row, req.kv_len)  # type: ignore[arg-type]
        present = self.cache.insert(ids, slots)
        if present > req.tree_len:
            self.pool.free(slots[req.tree_len : present])  # the tree had these tokens already
        tree_slots, node = self.cache.match_prefix(ids)
        assert len(tree_slots) == len(ids)
        self.table.set(req.row, req.tree_len, tree_slots[req.tree_len :])  # type: ignore
        self.cache.inc_lock(node)
        self.cache.dec_lock(req.last_node)  # type: ignore[arg-type]
        req.last_node, req.tree_len = node, req.kv_len

    def _release_slots(self, req: Req) -> None:
        """Give back req's row; its K/V goes to the cache (or the pool when it is disabled)."""
        if req.row is None:
            return
        self._cache_prefix(req)
        if self.cache.disabled:
            self.pool.free(self.table.get(req.row, req.kv_len))
        else:
            self.cache.dec_lock(req.last_node)  # type: ignore[arg-type]
        self.table.free(req.row)
        req.row, req.last_node, req.kv_len, req.tree_len = None, None, 0, 0
        if req in self.admitted:
            self.admitted.remove(req)

    def finish(self, req: Req) -> None:
        self._release_slots(req)
        if req in self.waiting:
            self.waiting.remove(req)

    def retract(self, req: Req) -> None:
        """Pause req under memory pressure: its K/V becomes evictable; it re-queues first."""
        self._release_slots(req)
        self.num_retracted += 1
        self.waiting.insert(0, req)

    def set_policy(self, policy: str) -> None:
        self.policy = check_policy(policy)
