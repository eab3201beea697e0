"""Requests in flight on a remote server: a streamed `/generate` as a runtime handle, and a
blocking one that a run can still cancel.

Owns `StreamHandle` (the runtime's `GenerateHandle`, fed by a reader thread from the SSE
stream: cumulative text and ids become `StreamChunk` deltas, the last event the result;
`cancel()` closes the stream, so the server aborts the request) and `BlockingCall` (a
non-streamed request, a batch for `select`, made in the caller's thread and tracked as a
handle whose `cancel()` asks `/abort_request` for its rids). Every request carries a fresh
`rid`, as SGLang's frontend may send. Knows nothing of prompts or of the language.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmnb.lang.backend.http_client import HttpClient
from lmnb.lang.backend.wire import delta, to_result
from lmnb.runtime.handle import GenerateHandle, GenerateResult, StreamChunk

if TYPE_CHECKING:
    import httpx


def new_rid() -> str:
    return uuid.uuid4().hex


class StreamHandle(GenerateHandle):
    """One streamed request. Opening it waits for the answer's headers, so a request the
    server refuses (a 400, a 401) raises in the caller's thread, as the runtime's `generate`
    does; the body is read on a thread of its own."""

    def __init__(self, http: HttpClient, body: dict[str, Any], tokenizer: Any,
                 prompt_logprobs: bool = False) -> None:
        rid = new_rid()
        super().__init__(rid, self._abort)  # type: ignore[arg-type]  # SGLang's rids are str
        self._http = http
        self._tokenizer = tokenizer
        self._prompt_logprobs = prompt_logprobs
        self._cancelled = threading.Event()
        self._response = http.open_stream("/generate", {**body, "stream": True, "rid": rid})
        self._reader = threading.Thread(target=self._read, name=f"lmnb-remote-{rid[:8]}",
                                        daemon=True)
        self._reader.start()

    def _abort(self, rid: Any) -> None:
        """Close the stream at once (shutting its socket down wakes the reader however it
        waits); the server sees the client go and aborts the request. Where the socket is
        out of reach, ask the server to abort the rid instead."""
        self._cancelled.set()
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is None:
            self._http.post_ok("/abort_request", {"rid": rid})
            return
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)

    def _read(self) -> None:
        try:
            result, error = self._follow()
        except Exception as exc:  # an answer this client cannot read: the caller still hears
            result, error = None, RuntimeError(f"unreadable answer from the server: {exc!r}")
        self._finish(result, error)

    def _follow(self) -> tuple[GenerateResult | None, BaseException | None]:
        """Push the stream's deltas; the result (or error) once it ends."""
        text, ids = "", []
        final: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            for event in sse_events(self._response, self._cancelled):
                if "error" in event:
                    error = RuntimeError(f"the server failed the request: "
                                         f"{_message(event['error'])}")
                    break
                new_text, new_ids = event.get("text") or "", event.get("output_ids") or []
                more_text, more_ids = delta(text, new_text), delta(ids, new_ids)
                if more_text or more_ids:
                    self._push(StreamChunk(more_text, list(more_ids)))
                text, ids = text + more_text, ids + list(more_ids)
                if _finished(event):
                    final = event
        except (self._http.errors, ValueError) as exc:
            if not self._cancelled.is_set():
                error = ConnectionError(f"the stream from {self._http.base_url} broke: {exc}")
        finally:
            self._response.close()
        return self._outcome(final, error, text, ids)

    def _outcome(self, final: dict[str, Any] | None, error: BaseException | None, text: str,
                 ids: list[int]) -> tuple[GenerateResult | None, BaseException | None]:
        if final is not None:
            return to_result(final, self._tokenizer, self._prompt_logprobs), None
        if self._cancelled.is_set():
            return GenerateResult(text, list(ids), "abort", 0, 0, len(ids)), None
        return None, error or RuntimeError("the server ended the stream without an answer")


def sse_events(response: httpx.Response, stop: threading.Event) -> Any:
    """The JSON events of a server-sent event stream, until `[DONE]` or `stop` is set."""
    for line in response.iter_lines():
        if stop.is_set():
            return
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _finished(event: dict[str, Any]) -> bool:
    return (event.get("meta_info") or {}).get("finish_reason") is not None


def _message(error: Any) -> str:
    return str(error.get("message", error)) if isinstance(error, dict) else str(error)


class BlockingCall:
    """A handle for a request made in the caller's own thread (`done`, `cancel`): `cancel()`
    aborts its rids on the server, which then answers at once."""

    def __init__(self, http: HttpClient, num_prompts: int) -> None:
        self._http = http
        self.rids = [new_rid() for _ in range(num_prompts)]
        self._done = threading.Event()
        self.cancelled = False

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        if self._done.is_set():
            return
        self.cancelled = True
        for rid in self.rids:
            self._http.post_ok("/abort_request", {"rid": rid})

    def run(self, body: dict[str, Any], batch: bool) -> list[dict[str, Any]]:
        """POST /generate (a list of prompts when `batch`); the answers, one per prompt."""
        try:
            if self.cancelled:
                raise RuntimeError("the request was cancelled before it was sent")
            rid: Any = self.rids if batch else self.rids[0]
            answer = self._http.post("/generate", {**body, "rid": rid})
        finally:
            self._done.set()
        return answer if batch else [answer]


def blocking(http: HttpClient, body: dict[str, Any], num_prompts: int, batch: bool,
             track: Callable[[Any], Any] | None) -> list[dict[str, Any]]:
    """Run one /generate request in this thread, tracked (so a cancelled run aborts it)."""
    call = BlockingCall(http, num_prompts)
    if track is not None:
        track(call)
    return call.run(body, batch)
