"""A program run's progress as plain data, read without blocking: what views draw.

Owns `Progress` (a run: its streams, elapsed time, status, and the totals of its model calls),
`StreamProgress` (one state, root or fork: ids, a category per id, the running gen's text, its
forks, nested), `GenProgress` (a gen while it runs: tokens so far of its maximum, tokens/s)
and `RunningGen`, the counter a stream's worker updates as chunks arrive. `read(executor)`
builds a `Progress` under each stream's lock; it never waits for the program. Knows nothing of
widgets; reads the interpreter's fields (the same package) so that views need not.

The figures, one definition each:
- `CallTotals`: over this run's model calls (every gen, select and fork's prefix commit, in all
  streams): prompt tokens, of which cached (already in the radix cache when the call came),
  and generated tokens. Summed per call, as the runtime counts its requests, so on a runtime
  that served nothing else they equal the runtime's own counters' growth.
- a stream's `categories`: each token of its text once, coloured by the first call that read
  it (`lmnb.lang.events.TokenLedger`); `reading` while the running gen's prompt is in flight.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from lmnb.lang.control import Cancelled

STATUSES = ("running", "done", "failed", "cancelled")


class RunningGen:
    """The gen a stream runs now: set by the worker when it starts, counted per chunk."""

    def __init__(self, name: str | None, max_tokens: int | None) -> None:
        self.name, self.max_tokens = name, max_tokens
        self.started = time.perf_counter()
        self.num_tokens = 0
        self._lock = threading.Lock()

    def add(self, num_tokens: int) -> None:
        with self._lock:
            self.num_tokens += num_tokens

    def read(self, now: float) -> GenProgress:
        with self._lock:
            num = self.num_tokens
        seconds = max(now - self.started, 0.0)
        return GenProgress(self.name, num, self.max_tokens, seconds,
                           num / seconds if seconds > 0 else 0.0)


@dataclass(frozen=True)
class GenProgress:
    name: str | None
    num_tokens: int  # generated so far
    max_tokens: int | None
    seconds: float  # since the gen started
    tokens_per_second: float


@dataclass(frozen=True)
class CallTotals:
    num_calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0

    @property
    def computed_tokens(self) -> int:
        return self.prompt_tokens - self.cached_tokens

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


@dataclass(frozen=True)
class StreamProgress:
    stream_id: int
    text: str  # the whole text so far (a fork's from the root on), the running gen's not yet
    ids: list[int]
    categories: list[str]  # one per id: CATEGORIES, or "reading" (the running call's prompt)
    live_text: str  # the running gen's text so far (not yet in `ids`)
    fork_start: int  # where this fork's own ids begin (0 for the root)
    running: GenProgress | None
    children: list[StreamProgress] = field(default_factory=list)

    def walk(self) -> list[StreamProgress]:
        """This stream and every fork below it, depth first."""
        return [self, *(s for c in self.children for s in c.walk())]


@dataclass(frozen=True)
class Progress:
    root: StreamProgress
    status: str  # one of STATUSES
    error: str  # the error's text, "" unless failed or cancelled
    elapsed: float  # seconds since the run started (to its last event once it ended)
    calls: CallTotals

    @property
    def done(self) -> bool:
        return self.status != "running"

    @property
    def running(self) -> list[GenProgress]:
        return [s.running for s in self.root.walk() if s.running is not None]


def read(ex: Any) -> Progress:
    """`ex`: a root `StreamExecutor`. Never blocks on the program (only on short locks)."""
    now = time.perf_counter()
    error = ex.first_error()
    done = ex.finished()
    status = "running" if error is None and not done else "done" if error is None else (
        "cancelled" if _is_cancel(error) else "failed")
    log = ex.events.log
    events = log.events()
    end = events[-1].time if events and status != "running" else now - log.t0
    return Progress(_stream(ex, now), status, str(error) if error else "", end,
                    call_totals(e.to_dict() for e in events))


def call_totals(events: Any) -> CallTotals:
    """Totals over the `end` events (as dicts) of gen, select and fork commits."""
    num = prompt = cached = completion = 0
    for e in events:
        if e["kind"] != "end" or e["data"].get("op") not in ("gen", "select", "fork"):
            continue
        if "prompt_tokens" not in e["data"]:
            continue  # a fork on a backend that committed nothing
        num += 1
        prompt += e["data"].get("prompt_tokens", 0)
        cached += e["data"].get("cached_tokens", 0)
        completion += e["data"].get("completion_tokens", 0)
    return CallTotals(num, prompt, cached, completion)


def _stream(ex: Any, now: float) -> StreamProgress:
    with ex._cond:
        ids, text, live_text, running = list(ex.ids), ex.text, ex.live_text, ex.running_gen
        fork_start = ex._fork_start[1]
        children = list(ex.children)
    categories = ex.ledger.categories()[: len(ids)]
    gen = running.read(now) if running is not None else None
    if gen is not None:  # the running call reads every id so far: it is their first reader
        categories = ["reading" if c == "pending" else c for c in categories]
    return StreamProgress(ex.events.stream_id, text, ids, categories, live_text, fork_start, gen,
                          [_stream(c, now) for c in children])


def _is_cancel(error: BaseException) -> bool:
    return isinstance(error, Cancelled) or isinstance(getattr(error, "cause", None), Cancelled)
