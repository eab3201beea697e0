"""One call to an OpenAI-compatible API as the language's `Handle`, the backend's token usage,
and API errors as the Python errors a program's user reads.

`ApiHandle` runs its call in the thread that first reads it (the state's worker: iterating
streams the chunks, `result()` reads to the end), so a call costs no thread of its own;
`cancel()` from any thread closes the open HTTP stream. Its results are the runtime's
`GenerateResult`, so the language shapes meta info the same way for every backend.
Knows nothing of chat turns, speculation or the `openai` client's request shapes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, fields
from typing import Any

from lmnb.lang.backend.base import Prompt

# A call: a generator given the handle (to register its closable stream) that yields text
# chunks and returns the finished `GenerateResult`.
Producer = Callable[["ApiHandle"], Generator[str, None, Any]]


@dataclass
class TokenUsage:
    """What the backend's calls cost, as SGLang's OpenAI backend counts it (`prompt_tokens`,
    `completion_tokens`), plus the number of API calls, the prompt tokens the server reported
    cached, and what API speculative execution saved: the calls not made and the prompt tokens
    they would have billed (an estimate: the turn's text counted in the speculative output's
    tokens)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    num_api_calls: int = 0
    saved_api_calls: int = 0
    saved_prompt_tokens: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def reset(self) -> None:
        with self._lock:
            for f in fields(self):
                setattr(self, f.name, 0)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)}


class ApiHandle:
    """A call in flight, read lazily: the first `__iter__` or `result()` makes the request."""

    def __init__(self, produce: Producer, describe: Callable[[BaseException], BaseException]):
        self._produce = produce
        self._describe = describe  # an API error -> the error the program raises
        self._lock = threading.Lock()
        self._started = False
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._stream: Any = None
        self.cancelled = False

    def attach(self, stream: Any) -> None:
        """The open HTTP stream `cancel()` closes (closed at once if already cancelled)."""
        with self._lock:
            self._stream = stream
            cancelled = self.cancelled
        if cancelled:
            stream.close()

    def __iter__(self) -> Iterator[Any]:
        from lmnb.runtime.handle import StreamChunk

        with self._lock:
            if self._started:
                raise RuntimeError("an API call's chunks can be read once")
            self._started = True
        try:
            if self.cancelled:
                self._result = aborted()
                return
            calls = self._produce(self)
            while True:
                try:
                    text = next(calls)
                except StopIteration as stop:
                    self._result = stop.value
                    return
                if text:
                    yield StreamChunk(text, [])
        except Exception as exc:
            if self.cancelled:
                self._result = aborted()
                return
            self._error = self._describe(exc)
            raise self._error from exc
        finally:
            self._done.set()

    def result(self, timeout: float | None = None) -> Any:
        with self._lock:
            mine = not self._started
        if mine:  # nobody read the chunks: read them here
            for _ in self:
                pass
        if not self._done.wait(timeout):
            raise TimeoutError(f"the API call did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        with self._lock:
            self.cancelled = True
            stream = self._stream
        if stream is not None and not self._done.is_set():
            stream.close()


def served(text: str, result: Any) -> ApiHandle:
    """A handle whose answer is already known (a gen served from speculation)."""

    def produce(_: ApiHandle) -> Generator[str, None, Any]:
        yield text
        return result

    return ApiHandle(produce, lambda exc: exc)


def aborted() -> Any:
    from lmnb.runtime.handle import GenerateResult

    return GenerateResult("", [], "abort", 0, 0, 0)


def result_from(text: str, finish_reason: str | None, usage: Any, **extra: Any) -> Any:
    """The runtime's `GenerateResult` for an API answer; `extra` become meta info fields."""
    from lmnb.runtime.handle import GenerateResult

    result = GenerateResult(
        text, [], finish_reason_of(finish_reason),
        prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
        cached_tokens=cached_tokens(usage),
        completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        text_tail=text,
    )
    result.__dict__.update(extra)  # shown by `result.meta` (it lists the instance's fields)
    return result


def finish_reason_of(reason: str | None) -> str:
    return "length" if reason == "length" else "stop"


def cached_tokens(usage: Any) -> int:
    details = getattr(usage, "prompt_tokens_details", None)
    return (getattr(details, "cached_tokens", 0) or 0) if details is not None else 0


def api_error(exc: BaseException, where: str) -> BaseException:
    """An `openai` client error as the error a program raises, naming the server's message:
    401/403 -> PermissionError, other 4xx -> ValueError, no connection -> ConnectionError,
    5xx -> RuntimeError. Other exceptions pass through."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        message = server_message(exc)
        status = exc.status_code
        if isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return PermissionError(f"{where} refused the request ({status}): {message}")
        if status < 500:
            return ValueError(f"{where} refused the request ({status}): {message}")
        return RuntimeError(f"{where} failed the request ({status}): {message}")
    if isinstance(exc, openai.APIConnectionError):
        return ConnectionError(f"cannot reach {where}: {exc}")
    return exc


def server_message(exc: Any) -> str:
    """The message inside an API error's body (OpenAI's `{"error": {"message": ...}}`)."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, str) and body:
        return body
    return getattr(exc, "message", None) or str(exc)


def check_chat_turn(prompt: Prompt, what: str) -> None:
    if prompt.role != "assistant":
        where = f"in the open {prompt.role!r} turn" if prompt.role else "outside any role"
        raise ValueError(
            f"a chat model writes assistant messages only: {what} must be inside "
            f"sgl.assistant(...), and this one is {where}")
