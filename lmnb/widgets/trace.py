"""`TraceView`: the fork/join trace of one program run (or a `--batch` cell's runs).

Reads the states' trace events (`state.events()`) and `state.progress()`, never blocking, and
draws one lane per stream on a time axis: gen/select spans named by their variables (running,
done, failed or cancelled), fork and join edges (`trace_svg`); below, each model call's
cached / computed / generated tokens as shares, summed into "this program's calls".
Traits: `num_lanes`, `lanes`, `spans`, `edges`, `done`, `html`. Refreshed (≤ 5 Hz) until the
runs finish; then the time axis ends at the last event.
"""

from __future__ import annotations

import time
from typing import Any

import traitlets

from lmnb.widgets.base import ProgramView
from lmnb.widgets.trace_svg import calls_html, legend_html, trace_model, trace_svg


class TraceView(ProgramView):
    num_lanes = traitlets.Int(0)
    lanes = traitlets.List([])
    spans = traitlets.List([])
    edges = traitlets.List([])

    def refresh(self) -> None:
        done = all(s.progress().done for s in self.states)
        runs = [(s.event_log.t0, [e.to_dict() for e in s.events()]) for s in self.states]
        now = _last_event_time(runs) if done else time.perf_counter()
        model = trace_model(runs, now)
        with self.hold_trait_notifications():
            self.lanes, self.spans, self.edges = model["lanes"], model["spans"], model["edges"]
            self.num_lanes = len(model["lanes"])
            self.done = done
            self.dom_data = {"num-lanes": self.num_lanes, "num-spans": len(model["spans"])}
            self.html = (f'<div class="lmnb-title"><b>fork/join trace</b>: {self.num_lanes} '
                         f"streams, {len(model['spans'])} spans</div>{legend_html()}"
                         f'<div class="lmnb-trace">{trace_svg(model)}</div>'
                         f"{calls_html(model)}")


def _last_event_time(runs: list[tuple[float, list[dict[str, Any]]]]) -> float:
    return max((t0 + e["time"] for t0, events in runs for e in events),
               default=min((t0 for t0, _ in runs), default=0.0))
