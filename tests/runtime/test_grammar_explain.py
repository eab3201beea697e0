"""The teaching view: a small regex's character FSM, compressed, as data, DOT and SVG."""

from __future__ import annotations

import random
import re
import shutil
import xml.etree.ElementTree as ET

import pytest

from lmnb.runtime.grammar import GrammarError, explain, to_dot, to_svg
from lmnb.runtime.grammar.char_fsm import CharDfa, regex_to_dfa

JSONISH = r'\{"name": "[a-z]+"(, "age": [0-9]+)?\}'


def edges_of(data: dict) -> set[tuple[str, bool]]:
    return {(e["label"], e["compressed"]) for e in data["edges"]}


def test_forced_characters_become_compressed_edges() -> None:
    data = explain("(ab|ac)d[0-9]+")
    assert edges_of(data) == {("a", True), ("[bc]", False), ("d", True), ("[0-9]", False)}
    assert data["start"] == 0 and len(data["accepting"]) == 1
    assert set(data) >= {"states", "edges", "start", "accepting"}


def test_chains_merge_into_one_edge() -> None:
    data = explain("(abc|abd)ef[0-9]+")
    assert ("ab", True) in edges_of(data) and ("ef", True) in edges_of(data)
    json_like = explain(JSONISH)
    assert ('{"name": "', True) in edges_of(json_like)
    assert (', "age": ', False) not in edges_of(json_like)
    assert (' "age": ', True) in edges_of(json_like)  # after the `,` the model chose
    uncompressed = explain(JSONISH, compress=False)
    assert len(uncompressed["states"]) > len(json_like["states"])
    assert not any(e["compressed"] for e in uncompressed["edges"])


def test_accepting_states_and_loops() -> None:
    data = explain("a*")
    assert data["states"] == [0] and data["accepting"] == [0]
    assert edges_of(data) == {("a", False)}
    assert explain(".")["edges"][0]["label"] == "[^\\n]"


@pytest.mark.parametrize("regex", ["a(b", "[a-", "*a", "a{3,1}", "^a", r"\q", "(?=a)"])
def test_bad_regexes_raise(regex: str) -> None:
    with pytest.raises(GrammarError, match="invalid regex"):
        explain(regex)


def accepts(dfa: CharDfa, text: str) -> bool:
    state = dfa.start
    for ch in text:
        nxt = [d for s, d, chars in dfa.edges if s == state and chars.contains(ord(ch))]
        if not nxt:
            return False
        state = nxt[0]
    return state in dfa.accepting


@pytest.mark.parametrize("regex", [
    "(ab|ac)d[0-9]+", r"[a-c]{1,3}(x|yz)?\.[^a]", "(a|b)*abb", r"\d{2,}-\w+", "(0|1(01*0)*1)*",
])
def test_dfa_agrees_with_python_re(regex: str) -> None:
    dfa = regex_to_dfa(regex)
    rng = random.Random(0)
    alphabet = "abcdxyz01.-_ \n"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 7)))
        assert accepts(dfa, text) == bool(re.fullmatch(regex, text)), text


def test_to_dot_marks_forced_edges() -> None:
    dot = to_dot(explain(JSONISH))
    assert dot.startswith("digraph") and "doublecircle" in dot
    assert '{\\"name\\":␣\\"' in dot and "penwidth=2" in dot


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz `dot` not installed")
def test_to_svg_with_graphviz() -> None:
    svg = to_svg(explain(JSONISH))
    root = ET.fromstring(svg.encode())
    assert root.tag.endswith("svg")
    assert "&quot;name&quot;" in svg or '"name"' in svg


def test_to_svg_without_graphviz(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")
    svg = to_svg(explain(JSONISH))
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert "{&quot;name&quot;:␣&quot;" in svg
    assert len(root.findall("{http://www.w3.org/2000/svg}circle")) >= 6
