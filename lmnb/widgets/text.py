"""`TextView`: a program state's text as it grows, and its error if it failed.

Reads `state.text()` and `state.error` only (both safe while the program runs). Live as an
anywidget, static as a `<pre>` (`_repr_html_`). Stops refreshing once the program is done.
"""

from __future__ import annotations

from html import escape
from typing import Any

import traitlets

from lmnb.widgets.base import HtmlView
from lmnb.widgets.poller import Poller


class TextView(HtmlView):
    text = traitlets.Unicode("").tag(sync=True)
    error = traitlets.Unicode("").tag(sync=True)
    done = traitlets.Bool(False).tag(sync=True)

    def __init__(self, state: Any, *, live: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.refresh()
        self.poller = Poller(self, done=lambda: self.done) if live else None

    def refresh(self) -> None:
        text, error, done = progress(self.state)
        with self.hold_trait_notifications():
            self.text = text
            self.error = str(error) if error else ""
            self.done = done
            err = f'<pre class="lmnb-error">{escape(self.error)}</pre>' if self.error else ""
            self.html = f'<pre class="lmnb-text">{escape(self.text)}</pre>{err}'


def progress(state: Any) -> tuple[str, Any, bool]:
    """(text so far, error or None, finished) without blocking: `state.text()` and
    `state.error` wait for the program, so this reads its executor's fields directly."""
    ex = state._ex
    error = getattr(ex, "error", None)
    finished = not getattr(ex, "_open", True) and ex._idle()
    return getattr(ex, "text", ""), error, bool(finished or error)
