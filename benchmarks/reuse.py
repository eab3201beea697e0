"""What a workload submits, and the best hit rate any prefix cache could get on it.

`RecordingBackend` wraps a backend (an lmnb `Runtime` or an `HFRuntime`) and records every
request in submission order: its prompt ids, what it asked for, and (once finished) its output
ids. `optimal_cached` walks those records through a token trie.

Definition of the optimal hit rate used in the report: requests are taken in submission order;
request i's prompt can reuse the longest prefix it shares with any earlier request's sequence
(that request's prompt followed by its output ids: generated tokens are cached too), capped at
what the request must compute anyway, namely its last prompt token (its logits give the first
output token) and, for prompt logprobs from position p (what `select` scores), every position
from p - 1 on. Optimal hit rate = sum of those reusable lengths / sum of prompt lengths: what an
unbounded cache that never evicts, with perfect scheduling, would get on exactly these requests.

Knows nothing of workloads, engines or timing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from lmnb.lang.backend.base import TokenBackend, prompt_ids


@dataclass
class Record:
    prompt_ids: list[int]
    logprob_start_len: int | None
    handle: Any
    output_ids: list[int] = field(default_factory=list)

    @property
    def must_compute_from(self) -> int:
        """The first prompt position the request computes even with everything cached."""
        limit = len(self.prompt_ids) - 1
        if self.logprob_start_len is not None:
            limit = min(limit, max(self.logprob_start_len, 1) - 1)
        return limit


class RecordingBackend(TokenBackend):
    """A backend that passes everything through and keeps a record of each request (select's
    and commit's too: `TokenBackend` makes them through `generate`)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self.records: list[Record] = []
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer

    @property
    def chat_template(self) -> Any:
        return self.backend.chat_template

    def generate(self, prompt: Any, params: Any) -> Any:
        ids = prompt_ids(prompt)
        with self._lock:  # the record's position is the request's submission order
            handle = self.backend.generate(ids, params)
            self.records.append(Record(ids, params.logprob_start_len, handle))
        return handle

    def stats(self) -> dict[str, Any]:
        return self.backend.stats()

    def flush_cache(self) -> bool:
        return self.backend.flush_cache()

    def finished_records(self) -> list[Record]:
        """The records with their output ids (waits for any request still running)."""
        for rec in self.records:
            rec.output_ids = list(rec.handle.result().output_ids)
        return self.records


class TokenTrie:
    """Token sequences as nested dicts; `longest_prefix` of a query against all of them."""

    def __init__(self) -> None:
        self.root: dict[int, Any] = {}
        self.num_nodes = 0

    def insert(self, ids: list[int]) -> None:
        node = self.root
        for t in ids:
            nxt = node.get(t)
            if nxt is None:
                nxt = node[t] = {}
                self.num_nodes += 1
            node = nxt

    def longest_prefix(self, ids: list[int]) -> int:
        node, n = self.root, 0
        for t in ids:
            node = node.get(t)
            if node is None:
                break
            n += 1
        return n


def optimal_cached(records: list[Record]) -> tuple[int, int]:
    """(reusable prompt tokens, prompt tokens) over the records, as defined above."""
    trie = TokenTrie()
    cached = total = 0
    for rec in records:
        total += len(rec.prompt_ids)
        cached += min(trie.longest_prefix(rec.prompt_ids), rec.must_compute_from)
        trie.insert(rec.prompt_ids + rec.output_ids)
    return cached, total


def logical_tokens(records: list[Record]) -> tuple[int, int]:
    """(prompt tokens, output tokens) the workload asked for, whatever a system reused."""
    return (sum(len(r.prompt_ids) for r in records),
            sum(len(r.output_ids) for r in records))
