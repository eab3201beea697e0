"""API speculative execution (the SGLang paper's third technique), as data and matching.

On a chat API a call can only return a whole assistant message, so a turn such as
`"Name:" + gen("name", stop="\\n") + "\\nJob:" + gen("job", stop="\\n")` would cost one call per
gen. With `@function(num_api_spec_tokens=N)` the first gen of a turn asks once for N tokens
(its stop strings dropped); this module keeps that output per open turn (`SpecStore`) and
serves each later gen of the turn from it (`serve`): when the output continues with exactly
the program's text so far (`Prompt.role_text`: the constant pieces and the values already
filled), the gen's value is what follows, cut by its stop strings and max_tokens as a call
would cut it. Otherwise `serve` says why not (`MISMATCH`, `RAN_OUT`) and the backend calls.

Knows nothing of HTTP, the `openai` client or states; a turn is the `Prompt.turn` key.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

MISMATCH = "mismatch"  # the output does not continue with the program's text
RAN_OUT = "ran out"  # the output ends inside the gen's value (the N tokens were used up)
PARAMS_DIFFER = "sampling differs"  # the gen samples differently from the speculative call


@dataclass(frozen=True)
class SpecOutput:
    """One speculative call's output, as the assistant turn's text from its start.

    `text[:start]` is the turn's text the call continued (empty for a call that opened the
    turn); `token_ends` are the offsets in `text` where each generated token ends, when the
    server said (its logprobs), else None. `finished`: the model ended the message inside the
    output (nothing follows it), as opposed to running out of tokens."""

    text: str
    start: int
    token_ends: tuple[int, ...] | None
    finished: bool
    prompt_tokens: int  # what the call billed for its prompt
    sampling: tuple  # the sampling a gen must share to be served (temperature, top_p, ...)


@dataclass(frozen=True)
class Served:
    """A gen's value cut from a speculative output, with what a call would have reported."""

    text: str
    finish_reason: str  # "stop" | "length"
    matched_stop: str | None
    completion_tokens: int  # tokens of the value inside the output
    prompt_tokens: int  # what a call for this gen would have billed (estimate, see below)


def serve(spec: SpecOutput, role_text: str, stop: tuple[str, ...], max_tokens: int,
          sampling: tuple) -> Served | str:
    """The value of a gen at `role_text` (the open turn's text so far) cut from `spec`, or why
    it cannot be (`MISMATCH`, `RAN_OUT`, `PARAMS_DIFFER`).

    Cut as the server would cut a call's output: at the first stop string that is complete
    within `max_tokens` tokens, else after `max_tokens` tokens ("length"), else where the model
    ended the message ("stop"). Without token boundaries `max_tokens` cannot be counted: the
    value is served only where a stop string or the message's end closes it."""
    if sampling != spec.sampling:
        return PARAMS_DIFFER
    begin = len(role_text)
    if begin < spec.start or not spec.text.startswith(role_text):
        return MISMATCH
    rest = spec.text[begin:]
    limit = _token_limit(spec.token_ends, begin, max_tokens)
    at, matched = first_stop(rest, stop)
    if matched is not None and (limit is None or at + len(matched) <= limit):
        value, reason = rest[:at], "stop"
    elif limit is not None:
        value, reason, matched = rest[:limit], "length", None
    elif spec.finished:
        value, reason = rest, "stop"
    else:
        return RAN_OUT
    return Served(value, reason, matched, _count_tokens(spec, begin, begin + len(value)),
                  spec.prompt_tokens + _count_tokens(spec, spec.start, begin))


def first_stop(text: str, stop: tuple[str, ...]) -> tuple[int, str | None]:
    """Where the earliest stop string starts in `text` and which (-1, None when none does)."""
    hits = [(i, s) for s in stop if (i := text.find(s)) >= 0]
    return min(hits) if hits else (-1, None)


def _token_limit(token_ends: tuple[int, ...] | None, begin: int, max_tokens: int) -> int | None:
    """The offset in the rest (after `begin`) where `max_tokens` generated tokens end, or None
    when fewer remain (or the boundaries are unknown). A token that straddles `begin` counts
    as the value's first."""
    if token_ends is None:
        return None
    ends = [e - begin for e in token_ends if e > begin]
    if max_tokens == 0:
        return 0
    return ends[max_tokens - 1] if len(ends) >= max_tokens else None


def _count_tokens(spec: SpecOutput, start: int, end: int) -> int:
    """Generated tokens overlapping text[start:end] (characters/4 when boundaries are unknown:
    an estimate, used only for counts)."""
    if end <= start:
        return 0
    if spec.token_ends is None:
        return -(-(end - start) // 4)
    count, previous = 0, spec.start
    for token_end in spec.token_ends:
        if token_end > start and previous < end:
            count += 1
        previous = token_end
    return count


class SpecStore:
    """The speculative output of each state's open turn: dropped when the turn ends (`drop`,
    from the interpreter's role end), or when a later turn of the same state calls (a turn's
    output never serves another turn); bounded, least recently used states go first."""

    def __init__(self, capacity: int = 1024) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[object, tuple[object, SpecOutput]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, turn: tuple) -> SpecOutput | None:
        state, number = turn
        with self._lock:
            entry = self._entries.get(state)
            if entry is None:
                return None
            if entry[0] != number:  # the state's earlier turn has ended
                del self._entries[state]
                return None
            self._entries.move_to_end(state)
            return entry[1]

    def put(self, turn: tuple, spec: SpecOutput) -> None:
        state, number = turn
        with self._lock:
            self._entries[state] = (number, spec)
            self._entries.move_to_end(state)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def drop(self, turn: tuple) -> None:
        """The turn has ended: forget its output."""
        state, number = turn
        with self._lock:
            entry = self._entries.get(state)
            if entry is not None and entry[0] == number:
                del self._entries[state]

    def __len__(self) -> int:
        return len(self._entries)
