"""The teaching view of constrained decoding: a small regex's character FSM, compressed.

Owns `explain(regex)`: the minimal character-level DFA of the regex as plain data, with chains
of single-choice transitions (the grammar forces the next character) merged into one edge whose
label is the forced string — the compressed FSM that jump-forward decoding walks. Knows nothing
of tokens or of the production compiler; rendering lives in `render.py`.
"""

from __future__ import annotations

from typing import Any

from lmnb.runtime.grammar.char_fsm import CharDfa, regex_to_dfa


def explain(regex: str, compress: bool = True) -> dict[str, Any]:
    """The regex's FSM as plain data (JSON-ready).

    Returns {"regex", "states": [int], "start": int, "accepting": [int],
    "edges": [{"src", "dst", "label", "compressed"}]}. A compressed edge is a forced (jump-
    forward) edge: its source allows exactly one character, and its label is the whole forced
    string, through states that nothing else enters. Other labels are a character or a class
    such as `[0-9]`. With compress=False, every edge is one character step.
    """
    dfa = regex_to_dfa(regex)
    edges = _compressed_edges(dfa) if compress else _char_edges(dfa)
    kept = sorted({dfa.start} | {e["src"] for e in edges} | {e["dst"] for e in edges})
    return {
        "regex": regex,
        "states": kept,
        "start": dfa.start,
        "accepting": sorted(a for a in dfa.accepting if a in kept),
        "edges": edges,
    }


def _char_edges(dfa: CharDfa) -> list[dict[str, Any]]:
    return [{"src": s, "dst": d, "label": c.label(), "compressed": False} for s, d, c in dfa.edges]


def _forced_char(dfa: CharDfa, out: dict[int, list[tuple[int, Any]]], state: int) -> str | None:
    """The one character `state` allows, when it allows exactly one and cannot end."""
    moves = out.get(state, [])
    if state in dfa.accepting or len(moves) != 1:
        return None
    return moves[0][1].single()


def _compressed_edges(dfa: CharDfa) -> list[dict[str, Any]]:
    out: dict[int, list[tuple[int, Any]]] = {}
    num_in = [0] * dfa.num_states
    for src, dst, chars in dfa.edges:
        out.setdefault(src, []).append((dst, chars))
        num_in[dst] += 1
    forced = {s: _forced_char(dfa, out, s) for s in range(dfa.num_states)}

    def hidden(state: int) -> bool:  # inside a forced chain: folded into the edge through it
        return state != dfa.start and forced[state] is not None and num_in[state] == 1

    edges = []
    for src in range(dfa.num_states):
        if hidden(src) and _entered_by_forced(dfa, forced, src):
            continue
        for dst, chars in out.get(src, []):
            if forced[src] is None:
                edges.append({"src": src, "dst": dst, "label": chars.label(), "compressed": False})
                continue
            label, state = forced[src], dst
            while hidden(state) and state != src and len(label) <= dfa.num_states:
                label += forced[state]
                state = out[state][0][0]
            edges.append({"src": src, "dst": state, "label": label, "compressed": True})
    return edges


def _entered_by_forced(dfa: CharDfa, forced: dict[int, str | None], state: int) -> bool:
    return any(dst == state and forced[src] is not None for src, dst, _ in dfa.edges)
