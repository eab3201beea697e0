"""`TextView`: a program state's text as it grows, and its error if it failed.

Reads `state.progress()` only (public, never blocking). Live as an
anywidget, static as a `<pre>` (`_repr_html_`). Stops refreshing once the program is done.
"""

from __future__ import annotations

from html import escape
from typing import Any

import traitlets

from lmnb.widgets.base import HtmlView
from lmnb.widgets.poller import Poller


class TextView(HtmlView):
    text = traitlets.Unicode("")
    error = traitlets.Unicode("")
    done = traitlets.Bool(False)

    def __init__(self, state: Any, *, live: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.state = state
        self.refresh()
        self.poller = Poller(self, done=lambda: self.done) if live else None

    def refresh(self) -> None:
        read = self.state.progress()
        text = read.root.text + read.root.live_text  # the root's (forks join into it)
        with self.hold_trait_notifications():
            self.text = text
            self.error = read.error
            self.done = read.done
            err = f'<pre class="lmnb-error">{escape(self.error)}</pre>' if self.error else ""
            self.html = f'<pre class="lmnb-text">{escape(self.text)}</pre>{err}'
