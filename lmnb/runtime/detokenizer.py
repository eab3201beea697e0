"""Incremental detokenization with stop strings: what text a request has produced so far.

Owns stop-string matching and holding back text that might still become a stop string or an
incomplete UTF-8 character. Knows nothing of the model or scheduling.
"""

from __future__ import annotations

from collections.abc import Callable


class Detokenizer:
    def __init__(self, decode: Callable[[list[int]], str], stop: tuple[str, ...]) -> None:
        self.decode = decode
        self.stop = stop
        self.max_stop_len = max((len(s) for s in stop), default=0)
        self.text = ""  # decoded output so far (truncated at a stop string once matched)
        self.sent = 0  # characters already streamed
        self.matched_stop: str | None = None

    def update(self, output_ids: list[int]) -> None:
        """Re-decode the output; truncate and record the first stop string found."""
        text = self.decode(output_ids)
        if self.stop:
            search_from = max(0, len(self.text) - self.max_stop_len)
            hits = [(text.find(s, search_from), s) for s in self.stop]
            hits = [(i, s) for i, s in hits if i >= 0]
            if hits:
                i, s = min(hits)
                self.text, self.matched_stop = text[:i], s
                return
        self.text = text

    def pending(self, final: bool) -> str:
        """Text not yet streamed that is safe to stream now."""
        end = len(self.text)
        if not final:
            end = self._safe_end()
        if end <= self.sent:
            return ""
        out = self.text[self.sent : end]
        self.sent = end
        return out

    def _safe_end(self) -> int:
        end = len(self.text)
        while end > self.sent and self.text[end - 1] == "\ufffd":  # an unfinished character
            end -= 1
        for s in self.stop:  # hold back a tail that may grow into a stop string
            for k in range(min(len(s) - 1, end - self.sent), 0, -1):
                if self.text[end - k : end] == s[:k]:
                    return end - k
        return end

    def split_ids(self, output_ids: list[int]) -> tuple[list[int], str]:
        """The longest prefix of output_ids whose text is a prefix of self.text, and the rest."""
        n = len(output_ids)
        while n > 0 and not self.text.startswith(self.decode(output_ids[:n])):
            n -= 1
        return output_ids[:n], self.text[len(self.decode(output_ids[:n])) :]
