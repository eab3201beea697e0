"""`HtmlView`: the anywidget base every view shares: an `html` trait drawn by the shipped JS.

A subclass computes plain-data traits and the markup from them in `refresh()` (pure, called
from the poller thread: it only sets traits); `dom_data` becomes `data-*` attributes on the
live view's element, so a browser test can read the view's counts from the DOM. Only `html`
and `dom_data` sync to the front end (its JS reads nothing else); the other traits are for
Python (tests, users) and cost no messages.
`_repr_html_` is that same markup, so a saved notebook shows a frozen picture without
JavaScript.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anywidget
import traitlets

from lmnb.widgets.poller import Poller

STATIC = Path(__file__).parent / "static"


class HtmlView(anywidget.AnyWidget):
    _esm = STATIC / "html_view.js"
    _css = STATIC / "views.css"
    html = traitlets.Unicode("").tag(sync=True)
    # copied by the JS onto the view's element as data-* attributes (for tests and styling)
    dom_data = traitlets.Dict({}).tag(sync=True)

    def refresh(self) -> None:  # pragma: no cover - every view overrides it
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return f'<div class="lmnb-view">{self.html}</div>'

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return with_static_html(self, super()._repr_mimebundle_(**kwargs))


class ProgramView(HtmlView):
    """A view of one or more program states, refreshed (<= 5 Hz) until every one is done."""

    done = traitlets.Bool(False)  # Python's; the front end reads `dom_data` and `html` only

    def __init__(self, states: Any, *, live: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.states = list(states) if isinstance(states, list | tuple) else [states]
        self.refresh()
        self.poller = Poller(self, done=lambda: self.done) if live else None


def with_static_html(view: Any, bundle: Any) -> Any:
    """The widget's bundle plus its static HTML, so a frontend without the widget (nbconvert,
    GitHub, a terminal shell's formatters) still has a picture."""
    data, meta = bundle if isinstance(bundle, tuple) else (bundle or {}, {})
    return {**data, "text/html": view._repr_html_()}, meta
