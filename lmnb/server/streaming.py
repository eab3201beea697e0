"""The bridge between the engine's handles (threads, blocking queues) and the event loop.

Owns submitting requests off the event loop (`submit`), following any number of handles from
one asyncio task without a thread blocked per request or per chunk (`HandleWatcher`: the
engine thread wakes the loop through `GenerateHandle.set_notify`, the loop takes chunks with
`drain`), cancelling handles whose client went away (a non-streaming client polled with
`is_disconnected`, a streaming one through `SSEResponse`), and the SSE framing. Knows nothing
of either API's payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from lmnb.runtime import Engine, GenerateHandle, GenerateResult, SamplingParams, StreamChunk
from lmnb.server.errors import BadRequest, EngineFailure, from_runtime

DISCONNECT_POLL_S = 0.5  # how often a waiting non-streaming request checks its client


@dataclass
class Submission:
    """One prompt to submit: ids (tokenised by the caller) and its sampling parameters."""

    ids: list[int]
    params: dict[str, Any]  # SamplingParams fields, runtime names
    wire_names: Mapping[str, str]  # runtime field -> the name the client used
    prompt_field: str  # what the client called the prompt


async def submit(engine: Engine, items: list[Submission]) -> list[GenerateHandle]:
    """Validate and submit every item, off the event loop (tokenising and grammar compiles
    take time). A bad item cancels the ones already submitted and raises BadRequest."""
    return await run_in_threadpool(_submit_all, engine, items)


def _submit_all(engine: Engine, items: list[Submission]) -> list[GenerateHandle]:
    handles: list[GenerateHandle] = []
    try:
        for i, item in enumerate(items):
            try:
                params = SamplingParams(**item.params)
                handles.append(engine.generate(item.ids, params))
            except (TypeError, ValueError) as exc:
                bad = from_runtime(exc, item.wire_names, item.prompt_field)
                if len(items) > 1:
                    bad.message = f"item {i}: {bad.message}"
                raise BadRequest(bad.message, bad.param) from None
            except RuntimeError as exc:  # the engine is shut down or its loop died
                raise EngineFailure(f"the engine refused the request: {exc}") from exc
    except BaseException:
        for handle in handles:
            handle.cancel()
        raise
    return handles


@dataclass
class Update:
    index: int  # which handle
    chunks: list[StreamChunk]
    done: bool


class ClientGone(Exception):
    """The client disconnected before its answer was ready; its requests were cancelled."""


class HandleWatcher:
    """Follows handles from one asyncio task: one event, woken from the engine thread."""

    def __init__(self, handles: list[GenerateHandle]) -> None:
        self.handles = handles
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self._scheduled = False  # a wake-up is already on its way to the loop
        for handle in handles:
            handle.set_notify(self._wake)

    def _wake(self) -> None:  # engine thread
        if self._scheduled:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
            self._loop.call_soon_threadsafe(self._set)

    def _set(self) -> None:  # loop thread
        self._scheduled = False
        self._event.set()

    async def updates(self) -> AsyncIterator[list[Update]]:
        """Each time something happened: the new chunks of each handle and whether it is done.
        Ends once every handle is done; a handle's last update has done=True."""
        finished: set[int] = set()
        while len(finished) < len(self.handles):
            self._event.clear()
            batch = []
            for i, handle in enumerate(self.handles):
                if i in finished:
                    continue
                done = handle.done()  # read before draining: then nothing is left behind
                chunks = handle.drain()
                if done:
                    finished.add(i)
                if chunks or done:
                    batch.append(Update(i, chunks, done))
            if batch:
                yield batch
            if len(finished) < len(self.handles):
                await self._event.wait()

    async def results(self, request: Request | None = None) -> list[GenerateResult]:
        """Wait for every handle; cancel them all and raise ClientGone if the client leaves."""
        checked = time.monotonic()
        while not all(h.done() for h in self.handles):
            self._event.clear()
            for handle in self.handles:
                handle.drain()  # nobody reads the stream: do not keep it
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._event.wait(), DISCONNECT_POLL_S)
            if request is not None and time.monotonic() - checked >= DISCONNECT_POLL_S:
                checked = time.monotonic()  # chunks wake us often: check on a clock
                if await request.is_disconnected():
                    self.cancel()
                    raise ClientGone()
        return [result_of(h) for h in self.handles]

    def cancel(self) -> None:
        for handle in self.handles:
            handle.cancel()
            handle.set_notify(None)


def result_of(handle: GenerateHandle) -> GenerateResult:
    """The finished handle's result; an engine error becomes EngineFailure (a 500)."""
    try:
        return handle.result(timeout=0)
    except Exception as exc:
        raise EngineFailure(f"request failed in the engine: {exc}") from exc


def sse(payload: Mapping[str, Any] | str) -> str:
    """One server-sent event: `data: <json>` (or a literal such as [DONE]) and a blank line."""
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {text}\n\n"


class SSEResponse(StreamingResponse):
    """An event stream that cancels its handles however it ends: finished, failed, or the
    client gone (Starlette cancels the sending task on disconnect)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(RuntimeError):  # already closed by its own error
                    await aclose()


async def error_events(events: AsyncIterator[str], body: Callable[[str], dict]) -> \
        AsyncIterator[str]:
    """`events`, then `data: [DONE]`; an error while streaming becomes one error event first
    (the status line has gone out already)."""
    try:
        async for event in events:
            yield event
    except (EngineFailure, BadRequest) as exc:
        yield sse(body(str(exc)))
    except Exception as exc:  # a bug here: the client still gets a well-formed end
        yield sse(body(f"internal error while streaming: {exc!r}"))
    yield sse("[DONE]")
