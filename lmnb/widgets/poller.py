"""`Poller`: a daemon thread that calls a view's `refresh()` at most `hz` times a second.

It only calls `refresh()` (which sets traits); it never prints or displays. It holds the view
weakly and ends when the view is closed or collected, when `stop()` is called, or when
`done()` has held for `linger` seconds (a finished program's view freezes), or when reading
fails (a remote runtime that went away): the view keeps its last picture and `error` says why,
with no traceback from a background thread in the notebook.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

MAX_HZ = 5.0


class Poller:
    def __init__(
        self, view: Any, hz: float = MAX_HZ, done: Callable[[], bool] | None = None,
        linger: float = 1.0,
    ) -> None:
        self.period = 1.0 / min(hz, MAX_HZ)
        self.done = done
        self.linger = linger
        self._view = weakref.ref(view)
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="lmnb-view", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        done_since: float | None = None
        while not self._stop.wait(self.period):
            view = self._view()
            if view is None or getattr(view, "comm", True) is None:
                return  # collected, or closed (ipywidgets drops its comm on close)
            try:
                view.refresh()
                finished = self.done is not None and self.done()
            except Exception as exc:  # the source failed: stop following it
                self.error = exc
                return
            del view
            if finished:
                done_since = done_since or time.monotonic()
                if time.monotonic() - done_since >= self.linger:
                    return
            else:
                done_since = None
