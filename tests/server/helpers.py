"""Helpers shared by the server tests: reading SSE bodies."""

from __future__ import annotations

import json


def sse_events(lines: list[str]) -> list[object]:
    """The `data:` payloads of an SSE body, JSON-decoded ([DONE] stays a string)."""
    out: list[object] = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
