"""program.trace: graphs, constant prefixes and their renderings (no model needed)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import lmnb as lm
from lmnb.lang.ir import RoleBegin, RoleEnd, Text
from lmnb.lang.tracer import plain_svg


@lm.function
def qa(s, question, style="short"):
    s += lm.system("You are a helpful assistant.")
    s += "Answer in a " + style + " way.\n"
    s += lm.user("Q: " + question)
    s += lm.assistant(lm.gen("answer", max_tokens=8))


@lm.function
def branches(s, topic):
    s += "Tips:\n"
    forks = s.fork(2)
    forks += lambda i: f"Tip {i}:" + lm.gen("tip", max_tokens=4)
    forks.join()
    s += "Summary of " + topic + ":" + lm.select("verdict", ["good", "bad"])
    if s["verdict"] == "good":
        s += "!"


def kinds(graph):
    return [n.kind for n in graph.nodes]


def test_trace_records_nodes_with_placeholders_for_arguments():
    graph = qa.trace()
    roles = ["role", "text", "role"]
    assert kinds(graph) == [*roles, "text", *roles, "role", "gen", "role"]
    assert graph.nodes[5].label == "Q: {question}"
    assert graph.stopped is None
    # defaults and given arguments are real values
    assert "short way" in graph.nodes[3].label


def test_constant_prefix_stops_before_anything_that_depends_on_arguments():
    prefix = qa.trace().constant_prefix()
    assert prefix == [
        RoleBegin("system"),
        Text("You are a helpful assistant."),
        RoleEnd("system"),
        Text("Answer in a short way.\n"),
        RoleBegin("user"),
    ]
    # "Q: " + question is one piece in a real run, so it is not part of the prefix
    given = qa.trace(question="Why?").constant_prefix()
    assert given[5:] == [Text("Q: Why?"), RoleEnd("user"), RoleBegin("assistant")]


def test_fork_and_join_edges():
    graph = branches.trace()
    fork = next(n for n in graph.nodes if n.kind == "fork")
    join = next(n for n in graph.nodes if n.kind == "join")
    children = [n for n in graph.nodes if n.stream != 0]
    assert {n.stream for n in children} == {1, 2}
    starts = [b for a, b in graph.edges if a == fork.id]
    assert len(starts) == 3  # two children and the parent's next node
    ends = [a for a, b in graph.edges if b == join.id]
    assert {graph.nodes[a].stream for a in ends} == {0, 1, 2}
    assert any(n.kind == "select" for n in graph.nodes)
    assert graph.to_dict()["nodes"][0]["kind"] == "text"


def test_tracing_stops_quietly_at_unknowable_values():
    @lm.function
    def uses_value(s, n):
        s += "Count:"
        s += lm.gen("x", max_tokens=2)
        s += str(int(s["x"]) + n)

    graph = uses_value.trace()
    assert kinds(graph) == ["text", "gen"]
    assert graph.stopped and "stopped" in repr(graph)


def test_dot_and_svg_renderings():
    graph = branches.trace()
    dot = graph.to_dot()
    assert dot.startswith('digraph "branches"') and "n0 -> n1;" in dot
    svg = graph._repr_svg_()
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    plain = ET.fromstring(plain_svg(graph))
    texts = [t.text for t in plain.iter("{http://www.w3.org/2000/svg}text")]
    assert "fork x2" in texts and "join (gather_variable)" in texts


def test_placeholders_written_into_strings_stay_placeholders():
    @lm.function
    def formatted(s, topic):
        s += "Tips.\n"
        s += f"About {topic}:" + lm.gen("tip", max_tokens=4)
        s += f" ({s['tip']})"

    graph = formatted.trace()
    assert [n.label for n in graph.nodes] == [
        "Tips.\u21b5About {topic}:",
        "gen tip(max_new_tokens=4)",
        " ({s['tip']})",
    ]
    assert graph.constant_prefix() == [Text("Tips.\n")]
    assert graph.stopped is None
