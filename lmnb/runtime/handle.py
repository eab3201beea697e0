"""What a caller holds for one request: a stream of chunks and the final result.

Owns the thread hand-off between the engine loop (producer) and callers (consumers). Knows
nothing of the model or scheduling; `cancel` asks the engine through a callback.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StreamChunk:
    text: str
    ids: list[int]


@dataclass
class GenerateResult:
    text: str
    output_ids: list[int]
    finish_reason: str  # "stop" | "length" | "abort"
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    # output_ids[:len(text_ids)] decode to a prefix of text; text_tail is the rest of text
    # (non-empty only when a stop string ended inside a token).
    text_ids: list[int] = field(default_factory=list)
    text_tail: str = ""
    prompt_logprobs: list[float] | None = None
    output_logprobs: list[float] | None = None
    forced_tokens: int = 0
    forced_positions: list[int] = field(default_factory=list)  # output_ids offsets forced
    jump_forward_steps: int = 0
    decode_steps: int = 0
    matched_stop: str | int | None = None

    @property
    def meta(self) -> dict:
        """The counters as plain data (what the language layer's get_meta_info shows)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("text", "output_ids")}


_DONE = object()


class GenerateHandle:
    def __init__(self, rid: int, on_cancel: Callable[[int], None]) -> None:
        self.rid = rid
        self._on_cancel = on_cancel
        self._chunks: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._result: GenerateResult | None = None
        self._error: BaseException | None = None
        self._notify: Callable[[], None] | None = None

    # ---- engine side ----------------------------------------------------------------------
    def _push(self, chunk: StreamChunk) -> None:
        self._chunks.put(chunk)
        self._wake()

    def _finish(self, result: GenerateResult | None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()
        self._chunks.put(_DONE)
        self._wake()

    def _wake(self) -> None:
        notify = self._notify
        if notify is not None:
            with contextlib.suppress(Exception):  # a consumer's callback never breaks the loop
                notify()

    # ---- caller side ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamChunk]:
        while True:
            item = self._chunks.get()
            if item is _DONE:
                if self._error is not None:
                    raise self._error
                return
            yield item

    def set_notify(self, notify: Callable[[], None] | None) -> None:
        """Have `notify()` called after every chunk and at the finish, from the engine's thread
        (it must return at once; an exception is ignored). With `drain`, an event loop waits
        for a stream without a thread blocked on it."""
        self._notify = notify

    def drain(self) -> list[StreamChunk]:
        """The chunks streamed and not yet taken, without blocking. Chunks pushed before
        `done()` became true are all there once it is; use either this or iteration."""
        chunks = []
        while True:
            try:
                item = self._chunks.get_nowait()
            except queue.Empty:
                return chunks
            if item is _DONE:
                self._chunks.put(_DONE)  # the end marker stays for an iterator
                return chunks
            chunks.append(item)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> GenerateResult:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.rid} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def cancel(self) -> None:
        if not self._done.is_set():
            self._on_cancel(self.rid)
