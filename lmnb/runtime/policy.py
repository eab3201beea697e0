"""Scheduling policies: the order in which waiting requests are admitted.

Owns `lpm` (longest cached prefix first), `dfs-weight` (walk the radix tree depth-first,
heaviest subtree first, so requests sharing a prefix run together), `fcfs`, and aging (a
request that waited more than `aging_steps` scheduler steps goes first, so none starves).
Knows nothing of the model or of memory.
"""

from __future__ import annotations

from collections import defaultdict

from lmnb.runtime.radix_cache import Node, RadixCache
from lmnb.runtime.req import Req

POLICIES = ("lpm", "dfs-weight", "fcfs")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"unknown scheduling policy {policy!r}; choose one of {POLICIES}")
    return policy


def order(
    waiting: list[Req], cache: RadixCache, policy: str, step: int, aging_steps: int | None
) -> list[Req]:
    aged = []
    if aging_steps is not None:
        aged = sorted((r for r in waiting if step - r.arrival > aging_steps), key=_arrival)
    rest = [r for r in waiting if not (aged and r in aged)]
    match policy:
        case "fcfs":
            rest.sort(key=_arrival)
        case "lpm":
            rest.sort(key=lambda r: (-cache.prefix_len(r.all_ids), r.arrival))
        case "dfs-weight":
            rest = _dfs_weight(rest, cache)
    return aged + rest


def _arrival(r: Req) -> tuple[int, int]:
    return r.arrival, r.rid


def _dfs_weight(reqs: list[Req], cache: RadixCache) -> list[Req]:
    at_node: dict[int, list[Req]] = defaultdict(list)
    weight: dict[int, int] = defaultdict(int)
    for r in sorted(reqs, key=_arrival):
        node = cache.locate(r.all_ids)[0]  # where its match ends, inside a node or not
        at_node[node.id].append(r)
        while node is not None:
            weight[node.id] += 1
            node = node.parent
    # Post-order: a node's subtrees (heaviest first) before the requests waiting at the node
    # itself, whose match is shorter: the best-cached requests go first, as under lpm.
    out: list[Req] = []
    stack: list[tuple[Node, bool]] = [(cache.root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            out.extend(at_node.get(node.id, ()))
            continue
        stack.append((node, True))
        kids = [c for c in node.children.values() if weight.get(c.id)]
        kids.sort(key=lambda c: (weight[c.id], -c.id))  # the heaviest is popped first
        stack.extend((c, False) for c in kids)
    return out
