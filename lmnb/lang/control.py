"""Cancelling a run: the requests a program and its forks have in flight, and a backend wrapper
that tracks them.

Owns `RunControl` (shared by a root state and its forks), `TrackedBackend` and the `Cancelled`
error. Knows nothing of the interpreter's ops or the runtime's internals: a handle only needs
`done()` and `cancel()`.
"""

from __future__ import annotations

import threading
from typing import Any


class Cancelled(Exception):
    """The program was cancelled (`StreamExecutor.cancel`, Ctrl-C on a waiting cell)."""


class RunControl:
    """What one run (a root state and its forks) shares: its in-flight requests and whether it
    was cancelled. Cancelling aborts every request not yet finished (the runtime frees their
    slots) and makes every later model call raise `Cancelled`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: list[Any] = []
        self.cancelled = False

    def track(self, handle: Any) -> Any:
        with self._lock:
            self._handles = [h for h in self._handles if not h.done()] + [handle]
            cancelled = self.cancelled
        if cancelled:
            handle.cancel()
        return handle

    def cancel(self) -> int:
        """Abort the run's unfinished requests; returns how many were still running."""
        with self._lock:
            self.cancelled = True
            live = [h for h in self._handles if not h.done()]
        for handle in live:
            handle.cancel()
        return len(live)


class TrackedBackend:
    """A backend whose requests a `RunControl` can cancel; everything else passes through."""

    def __init__(self, backend: Any, control: RunControl) -> None:
        self.inner = backend
        self.control = control

    def generate(self, prompt: Any, params: Any) -> Any:
        self._check()
        return self.control.track(self.inner.generate(prompt, params))

    def select(self, prompt: Any, choices: Any, method: Any, track: Any = None) -> Any:
        self._check()
        return self.inner.select(prompt, choices, method, track=self.control.track)

    def commit(self, prompt: Any, track: Any = None) -> dict[str, int]:
        self._check()
        return self.inner.commit(prompt, track=self.control.track)

    def _check(self) -> None:
        if self.control.cancelled:
            raise Cancelled("the program was cancelled")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
