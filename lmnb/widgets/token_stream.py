"""`TokenStreamView`: a program's text as it grows, each token styled by where it came from.

Reads a state's executor without blocking: its token ids, its `TokenLedger` (which calls read
which tokens, and whether they were cached) and the running gen's text. Categories: cached
prompt tokens, computed prompt tokens, generated tokens, jump-forward tokens (forced by a
grammar), and pending text no call has read yet; the running gen streams in as generated.
Inline styles, so the static repr looks the same in nbconvert and on GitHub. Takes one state
or a list (a `--batch` cell). Knows nothing of the engine.
"""

from __future__ import annotations

from html import escape
from typing import Any

import traitlets

from lmnb.lang.events import CATEGORIES
from lmnb.widgets.base import ProgramView

STYLE = {  # category -> (inline style, legend)
    "cached": ("background:#d5f5e3", "cached prompt"),
    "computed": ("background:#fdebd0", "computed prompt"),
    "generated": ("background:#d6eaf8;font-weight:bold", "generated"),
    "jump_forward": ("background:#e8daef;text-decoration:underline", "jump-forward"),
    "pending": ("color:#888", "not yet read by a call"),
}


class TokenStreamView(ProgramView):
    counts = traitlets.Dict({}).tag(sync=True)  # category -> tokens, over every state
    num_tokens = traitlets.Int(0).tag(sync=True)  # the states' ids, all counted
    error = traitlets.Unicode("").tag(sync=True)

    def refresh(self) -> None:
        reads = [read_state(s) for s in self.states]
        counts = dict.fromkeys(CATEGORIES, 0)
        for read in reads:
            for cat in read["categories"]:
                counts[cat] += 1
        errors = [r["error"] for r in reads if r["error"]]
        with self.hold_trait_notifications():
            self.counts = counts
            self.num_tokens = sum(len(r["ids"]) for r in reads)
            self.error = errors[0] if errors else ""
            self.done = all(r["done"] for r in reads)
            self.dom_data = {"num-tokens": self.num_tokens, "done": int(self.done)}
            self.html = self._markup(reads)

    def _markup(self, reads: list[dict[str, Any]]) -> str:
        blocks = []
        for i, (state, read) in enumerate(zip(self.states, reads, strict=True)):
            head = f"<div><b>#{i}</b></div>" if len(reads) > 1 else ""
            body = runs_html(state._ex.backend.tokenizer, read)
            err = (f'<pre class="lmnb-error" style="color:#b00">{escape(read["error"])}</pre>'
                   if read["error"] else "")
            blocks.append(f'{head}<div class="lmnb-tokens" style="white-space:pre-wrap">'
                          f"{body}</div>{err}")
        return f"<div><b>token stream</b></div>{legend_html(self.counts)}{''.join(blocks)}"


def read_state(state: Any) -> dict[str, Any]:
    """ids, a category per id, the running gen's text, error text and whether it is done,
    read together under the executor's lock (so the categories match the ids)."""
    ex = state._ex
    with ex._cond:
        ids = list(ex.ids)
        categories = ex.ledger.categories()
        live_text = ex.live_text
    error = ex.first_error()
    return {"ids": ids, "categories": categories, "live_text": live_text,
            "error": str(error) if error else "", "done": ex.finished() or error is not None}


def runs(categories: list[str]) -> list[tuple[str, int, int]]:
    """(category, start, end) for each stretch of equal categories."""
    out: list[tuple[str, int, int]] = []
    for i, cat in enumerate(categories):
        if out and out[-1][0] == cat:
            out[-1] = (cat, out[-1][1], i + 1)
        else:
            out.append((cat, i, i + 1))
    return out


def runs_html(tokenizer: Any, read: dict[str, Any]) -> str:
    ids = read["ids"]
    spans = [
        f'<span class="lmnb-tok-{cat}" style="{STYLE[cat][0]}" title="{end - start} '
        f'{STYLE[cat][1]} tokens">{escape(tokenizer.decode(ids[start:end]))}</span>'
        for cat, start, end in runs(read["categories"])
    ]
    if read["live_text"]:
        spans.append(f'<span class="lmnb-tok-streaming" style="{STYLE["generated"][0]};'
                     f'font-style:italic">{escape(read["live_text"])}▌</span>')
    return "".join(spans)


def legend_html(counts: dict[str, int]) -> str:
    items = "".join(
        f'<span style="{STYLE[cat][0]};padding:0 4px;margin-right:6px">'
        f"{STYLE[cat][1]}: {counts.get(cat, 0)}</span>" for cat in CATEGORIES)
    return f'<div style="margin:2px 0">{items}</div>'
