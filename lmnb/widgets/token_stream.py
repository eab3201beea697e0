"""`TokenStreamView`: a program's text as it grows, each token styled by where it came from,
every stream shown: a fork's text in a lane of its own (nested forks inside their lane).

Reads `state.progress()` only (public, never blocking; `lmnb.lang.progress`): each stream's
ids and a category per id (cached / computed prompt, generated, jump-forward, pending, or being
read by the running call), the running gens' text, tokens so far / max and tokens/s, elapsed
time, status, and the totals of the run's model calls ("this program's calls", the figure the
trace's calls add up to). Inline styles, so the static repr looks the same in nbconvert and on
GitHub. Takes one state or a list (a `--batch` cell). Knows nothing of the engine.
"""

from __future__ import annotations

from html import escape
from typing import Any

import traitlets

from lmnb.lang.events import CATEGORIES
from lmnb.lang.progress import CallTotals, Progress, StreamProgress
from lmnb.widgets.base import ProgramView

INK = "color:#1b1b1b;"  # dark text on the light swatches, in light and dark themes alike
STYLE = {  # category -> (inline style, legend, tooltip)
    "cached": (INK + "background:#c8efd9", "cached",
               "prompt tokens the first call that read them found in the radix cache"),
    "computed": (INK + "background:#fbdcb0", "computed",
                 "prompt tokens the first call that read them had to compute"),
    "reading": (INK + "background:#fbdcb0;opacity:.6", "in the running call",
                "prompt tokens the running call is reading: cached or computed is known "
                "when it ends"),
    "generated": (INK + "background:#cfe5f7;font-weight:600", "generated",
                  "tokens the model sampled"),
    "jump_forward": (INK + "background:#e3d3ee;text-decoration:underline", "jump-forward",
                     "tokens a grammar forced (appended in one extend step)"),
    "pending": ("color:#8a8a8a", "not yet read", "text no model call has read yet"),
}
KINDS = (*CATEGORIES[:2], "reading", *CATEGORIES[2:])
# The text box opens at its end and stays there while the text grows (a flex column in
# reverse order scrolls from the bottom; one inner block keeps the text in order), in the
# static picture too; its height is a whole number of lines, so no line is cut in half.
BOX_STYLE = ("display:flex;flex-direction:column-reverse;overflow:auto;white-space:pre-wrap;"
             "font-family:monospace;line-height:1.55;max-height:calc(16 * 1.55em)")
CALLS_TIP = ("Summed over this program's model calls (every gen, select and fork's prefix "
             "commit, in every stream), as the runtime counts its requests: a token is counted "
             "each time a call reads it in its prompt, cached if it was already in the radix "
             "cache. So a later turn re-reading the conversation counts it again, as cached. "
             "The cache panel's figures count the whole runtime since it started.")
TEXT_TIP = ("The colours of the text below: each token of the text once (a fork's own text in "
            "its lane), by where it came from: the first call that read it found it cached or "
            "computed it, or the model generated it. \"this program's calls\" above counts a "
            "token again each time a later call re-reads it.")


class TokenStreamView(ProgramView):
    counts = traitlets.Dict({})  # category -> tokens shown, over every stream of every state
    num_tokens = traitlets.Int(0)  # tokens shown (each stream's own), running gens included
    num_streams = traitlets.Int(0)
    calls = traitlets.Dict({})  # this program's calls: CallTotals' fields (all states summed)
    error = traitlets.Unicode("")

    def refresh(self) -> None:
        reads = [s.progress() for s in self.states]
        counts = dict.fromkeys(KINDS, 0)
        for read in reads:
            for stream in read.root.walk():
                for cat in stream.categories[stream.fork_start:]:
                    counts[cat] += 1
                counts["generated"] += stream.running.num_tokens if stream.running else 0
        totals = sum_calls([r.calls for r in reads])
        errors = [r.error for r in reads if r.error]
        with self.hold_trait_notifications():
            self.counts = counts
            self.num_tokens = sum(counts.values())
            self.num_streams = sum(len(r.root.walk()) for r in reads)
            self.calls = {**vars(totals), "hit_rate": totals.hit_rate}
            self.error = errors[0] if errors else ""
            self.done = all(r.done for r in reads)
            self.dom_data = {"num-tokens": self.num_tokens, "num-streams": self.num_streams,
                             "done": int(self.done), "status": status_of(reads)}
            self.html = self._markup(reads, totals)

    def _markup(self, reads: list[Progress], totals: CallTotals) -> str:
        blocks = []
        for i, (state, read) in enumerate(zip(self.states, reads, strict=True)):
            head = f'<div class="lmnb-sub">run #{i}</div>' if len(reads) > 1 else ""
            body = stream_html(state.tokenizer, read.root)
            err = (f'<pre class="lmnb-error" style="color:#c0392b">{escape(read.error)}</pre>'
                   if read.error else "")
            blocks.append(f'{head}<div class="lmnb-tokens" style="{BOX_STYLE}"><div>{body}'
                          f'</div></div>{err}')
        return (f'<div class="lmnb-title"><b>token stream</b> {status_html(reads)}</div>'
                f"{calls_html(totals)}{gens_html(reads)}{legend_html(self.counts)}"
                f"{''.join(blocks)}")


def sum_calls(totals: list[CallTotals]) -> CallTotals:
    return CallTotals(*(sum(getattr(t, f) for t in totals) for f in
                        ("num_calls", "prompt_tokens", "cached_tokens", "completion_tokens")))


def status_of(reads: list[Progress]) -> str:
    statuses = {r.status for r in reads}
    return next((s for s in ("running", "cancelled", "failed") if s in statuses), "done")


def status_html(reads: list[Progress]) -> str:
    status = status_of(reads)
    colour = {"running": "#2471a3", "done": "#1e8449", "failed": "#c0392b",
              "cancelled": "#b9770e"}[status]
    elapsed = max((r.elapsed for r in reads), default=0.0)
    return (f'<span class="lmnb-status lmnb-status-{status}" style="color:{colour}">'
            f"{status}</span> <span class=\"lmnb-dim\" title=\"since the program started"
            f'{" (to its last event)" if status != "running" else ""}">{elapsed:.1f} s</span>')


def calls_html(t: CallTotals) -> str:
    return (f'<div class="lmnb-figures lmnb-help" title="{escape(CALLS_TIP)}">'
            f"<b>this program's calls</b>: {t.num_calls}, reading prompt tokens "
            f"{t.prompt_tokens}, of which cached {t.cached_tokens} ({t.hit_rate:.0%}) and "
            f"computed {t.computed_tokens} · generated {t.completion_tokens}</div>")


def gens_html(reads: list[Progress]) -> str:
    """A progress bar per running gen: tokens so far / max, tokens/s."""
    rows = []
    for i, read in enumerate(reads):
        for stream in read.root.walk():
            if (g := stream.running) is None:
                continue
            where = ("s" if stream.stream_id == 0 else f"fork {stream.stream_id}") + (
                f" (run #{i})" if len(reads) > 1 else "")
            share = min(g.num_tokens / g.max_tokens, 1.0) if g.max_tokens else 0.0
            of = f"/{g.max_tokens}" if g.max_tokens else ""
            rows.append(
                f'<div class="lmnb-gen-progress" data-stream="{stream.stream_id}">'
                f'<span class="lmnb-meter" style="display:inline-block;width:80px;height:8px;'
                f'border:1px solid #888;vertical-align:middle"><span style="display:block;'
                f'height:100%;width:{100 * share:.0f}%;background:#5dade2"></span></span> '
                f"gen {escape(g.name or '')} in {where}: {g.num_tokens}{of} tokens, "
                f"{g.tokens_per_second:.1f} tok/s</div>")
    return "".join(rows)


def stream_html(tokenizer: Any, stream: StreamProgress) -> str:
    """A stream's own tokens (from its fork point on), its forks' lanes at the points where
    they forked, then the running gen's text."""
    by_start: dict[int, list[StreamProgress]] = {}
    for child in stream.children:
        by_start.setdefault(child.fork_start, []).append(child)
    parts, at = [], stream.fork_start
    for start in sorted(by_start):
        parts.append(runs_html(tokenizer, stream, at, start))
        lanes = "".join(_lane_html(tokenizer, c) for c in by_start[start])
        parts.append(f'<div class="lmnb-lanes" style="display:flex;flex-wrap:wrap;gap:6px;'
                     f'margin:4px 0">{lanes}</div>')
        at = max(at, start)
    parts.append(runs_html(tokenizer, stream, at, len(stream.ids)))
    if stream.live_text:
        parts.append(f'<span class="lmnb-tok-streaming" style="{STYLE["generated"][0]};'
                     f'font-style:italic">{escape(stream.live_text)}▌</span>')
    return "".join(parts)


def _lane_html(tokenizer: Any, child: StreamProgress) -> str:
    gen = child.running
    now = (f' · gen {escape(gen.name or "")} {gen.num_tokens}'
           f'{"/" + str(gen.max_tokens) if gen.max_tokens else ""}' if gen else "")
    return (f'<div class="lmnb-lane" data-stream="{child.stream_id}" style="flex:1 1 220px;'
            f'min-width:180px;border-left:3px solid #8e44ad;padding:0 6px">'
            f'<div class="lmnb-lane-head" style="font-family:sans-serif;color:#8e44ad">'
            f"fork {child.stream_id}{now}</div>{stream_html(tokenizer, child)}</div>")


def runs(categories: list[str]) -> list[tuple[str, int, int]]:
    """(category, start, end) for each stretch of equal categories."""
    out: list[tuple[str, int, int]] = []
    for i, cat in enumerate(categories):
        if out and out[-1][0] == cat:
            out[-1] = (cat, out[-1][1], i + 1)
        else:
            out.append((cat, i, i + 1))
    return out


def runs_html(tokenizer: Any, stream: StreamProgress, start: int, end: int) -> str:
    ids, cats = stream.ids[start:end], stream.categories[start:end]
    return "".join(
        f'<span class="lmnb-tok-{cat}" style="{STYLE[cat][0]}" title="{b - a} '
        f'{STYLE[cat][1]} tokens: {STYLE[cat][2]}">'
        f"{escape(tokenizer.decode(ids[a:b]) if tokenizer else '')}</span>"
        for cat, a, b in runs(cats))


def legend_html(counts: dict[str, int]) -> str:
    """The text's colour key, each chip with its count of the text's tokens (each once)."""
    items = "".join(
        f'<span class="lmnb-swatch" style="{STYLE[cat][0]};padding:0 4px;margin-right:6px;'
        f'border-radius:3px" title="{escape(STYLE[cat][2])}">{STYLE[cat][1]} '
        f'<span class="lmnb-num">{counts.get(cat, 0)}</span></span>'
        for cat in KINDS if cat != "reading" or counts.get(cat))
    total = sum(counts.values())
    return (f'<div class="lmnb-legend" style="margin:2px 0"><span class="lmnb-help lmnb-key" '
            f'title="{escape(TEXT_TIP)}">the text\'s {total} tokens, each once:</span> '
            f"{items}</div>")
