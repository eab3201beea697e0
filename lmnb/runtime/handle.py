"""What a caller holds for one request: a stream of chunks and the final result.

Owns the thread hand-off between the engine loop (producer) and callers (consumers). Knows
nothing of the model or scheduling; `cancel` asks the engine through a callback.
"""

from __future__ import annotations

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

    # ---- engine side ----------------------------------------------------------------------
    def _push(self, chunk: StreamChunk) -> None:
        self._chunks.put(chunk)

    def _finish(self, result: GenerateResult | None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.set()
        self._chunks.put(_DONE)

    # ---- caller side ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[StreamChunk]:
        while True:
            item = self._chunks.get()
            if item is _DONE:
                if self._error is not None:
                    raise self._error
                return
            yield item

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
