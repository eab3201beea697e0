"""Per-stream trace events of a program run, for the fork/join trace and token stream widgets.

Owns the event record and the thread-safe log one program run (its root state and every fork)
writes to. Kinds: `start`/`end` of each primitive, `tokens` (text appended, constant or
generated), `fork`, `join`, `cache_hit`, `error`. Events are plain data so that views can render
them statically. Knows nothing of states, models or widgets.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any

KINDS = ("start", "end", "tokens", "fork", "join", "cache_hit", "error")


@dataclass(frozen=True)
class TraceEvent:
    kind: str
    stream_id: int  # 0 is the root state; forks get the next numbers in order
    time: float  # seconds since the log started
    name: str | None = None  # the variable, for primitives that set one
    data: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}")
        object.__setattr__(self, "data", MappingProxyType(dict(self.data)))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["data"] = dict(self.data)
        return out


Listener = Callable[[TraceEvent], None]


class EventLog:
    """Append-only, thread-safe. Listeners run on the appending thread: keep them short."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[TraceEvent] = []
        self._listeners: list[Listener] = []
        self._stream_ids = itertools.count()
        self.t0 = time.perf_counter()  # event times are seconds after this

    def new_stream_id(self) -> int:
        return next(self._stream_ids)

    def record(self, kind: str, stream_id: int, name: str | None = None, **data: Any) -> None:
        event = TraceEvent(kind, stream_id, time.perf_counter() - self.t0, name, data)
        with self._lock:
            self._events.append(event)
            listeners = list(self._listeners)
        for listener in listeners:
            listener(event)

    def events(self, kind: str | None = None, stream_id: int | None = None) -> list[TraceEvent]:
        with self._lock:
            events = list(self._events)
        return [
            e
            for e in events
            if (kind is None or e.kind == kind) and (stream_id is None or e.stream_id == stream_id)
        ]

    def subscribe(self, listener: Listener, replay: bool = True) -> Callable[[], None]:
        """Call `listener` on every new event (and first on the past ones when `replay`).

        Returns a function that unsubscribes.
        """
        with self._lock:
            past = list(self._events) if replay else []
            self._listeners.append(listener)
        for event in past:
            listener(event)
        return lambda: self._unsubscribe(listener)

    def _unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)


class StreamRecorder:
    """The events of one stream (one state), in the words of the interpreter's ops."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.stream_id = log.new_stream_id()

    def start(self, op: str, name: str | None = None) -> None:
        self.log.record("start", self.stream_id, name, op=op)

    def end(
        self, op: str, name: str | None = None, counts: Mapping[str, int] | None = None
    ) -> None:
        """The end of an op; `counts` (prompt, cached, completion tokens) add a cache hit."""
        counts = counts or {}
        if counts.get("cached_tokens"):
            hit = {k: counts[k] for k in ("cached_tokens", "prompt_tokens")}
            self.log.record("cache_hit", self.stream_id, name, **hit)
        self.log.record("end", self.stream_id, name, op=op, **counts)

    def tokens(self, name: str | None, text: str, num_tokens: int, source: str) -> None:
        data = {"text": text, "num_tokens": num_tokens, "source": source}
        self.log.record("tokens", self.stream_id, name, **data)

    def fork(self, children: list[int], prefix_len: int) -> None:
        self.log.record("fork", self.stream_id, children=children, prefix_len=prefix_len)

    def join(self, children: list[int], mode: str) -> None:
        self.log.record("join", self.stream_id, children=children, mode=mode)

    def error(self, message: str) -> None:
        self.log.record("error", self.stream_id, message=message)


# ---- the token ledger: where each token of a stream came from -------------------------------

CATEGORIES = ("cached", "computed", "generated", "jump_forward", "pending")


@dataclass(frozen=True)
class Segment:
    """`length` ids appended at `start`: `kind` is text, gen or select; `forced` are the
    offsets (from `start`) of jump-forward tokens in a gen."""

    start: int
    length: int
    kind: str
    name: str | None = None
    forced: tuple[int, ...] = ()


@dataclass(frozen=True)
class ModelCall:
    """A request (or a select's batch of them) over the first `prefix_len` ids of a stream, of
    which the first `cached_len` were in the radix cache before it."""

    prefix_len: int
    cached_len: int
    op: str


class TokenLedger:
    """A stream's segments and model calls, in order; a fork child starts with a copy of its
    parent's. Appended by the stream's worker; read from any thread (copies under a lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.segments: list[Segment] = []
        self.calls: list[ModelCall] = []

    def add_segment(self, segment: Segment) -> None:
        if segment.length:
            with self._lock:
                self.segments.append(segment)

    def add_call(self, call: ModelCall) -> None:
        with self._lock:
            self.calls.append(call)

    def copy(self) -> TokenLedger:
        new = TokenLedger()
        with self._lock:
            new.segments, new.calls = list(self.segments), list(self.calls)
        return new

    def categories(self) -> list[str]:
        """One of `CATEGORIES` per token: gen output is generated or jump_forward; other ids
        are cached or computed by the first call that read them, or pending if none has yet."""
        with self._lock:
            segments, calls = list(self.segments), list(self.calls)
        out: list[str] = []
        for seg in segments:
            out.extend(_segment_categories(seg, calls))
        return out


def _segment_categories(seg: Segment, calls: list[ModelCall]) -> list[str]:
    if seg.kind in ("gen", "select"):
        forced = set(seg.forced)
        return ["jump_forward" if i in forced else "generated" for i in range(seg.length)]
    out = []
    for pos in range(seg.start, seg.start + seg.length):
        reader = next((c for c in calls if c.prefix_len > pos), None)
        if reader is None:
            out.append("pending")
        else:
            out.append("cached" if pos < reader.cached_len else "computed")
    return out
