"""SGLang's documented example programs, run as SGLang code on lmnb and the default model.

The programs are those of SGLang's README quick start and its frontend-language docs
(multi-turn QA, control flow with `choices`, fork/join tips, regex, JSON via regex and via
`json_schema`, `run_batch`, streaming with `text_iter`, roles), written against `sglang` with
only the backend line changed (`Runtime(engine=...)` wraps the session's engine, so the model
loads once) and smaller `max_tokens` (the examples' 256 would take minutes on a CPU). Each test
checks what a user of the example expects: the variables are set, the regex matches, the JSON
parses, the fork results are listed, the stream adds up to the final text.

`sys.modules["sglang"] = lmnb` is the only aliasing: `import sglang` and `from sglang import
...` then reach lmnb (the `sgl` fixture sets it for this module and undoes it after).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import lmnb


@pytest.fixture(scope="module")
def sgl(engine) -> Iterator[Any]:
    """`import sglang as sgl` with sglang aliased to lmnb, the default model as the default
    backend (SGLang's `set_default_backend(Runtime(...))`); all undone after the module."""
    assert "sglang" not in sys.modules
    sys.modules["sglang"] = lmnb
    before = lmnb.global_config.default_backend
    try:
        sgl = importlib.import_module("sglang")
        sgl.set_default_backend(sgl.Runtime(engine=engine))  # the one line changed
        yield sgl
    finally:
        lmnb.set_default_backend(before)
        for name in [n for n in sys.modules if n == "sglang" or n.startswith("sglang.")]:
            del sys.modules[name]


def test_quick_start_multi_turn_question(sgl):
    from sglang import assistant, function, gen, system, user

    @function
    def multi_turn_question(s, question_1, question_2):
        s += system("You are a helpful assistant.")
        s += user(question_1)
        s += assistant(gen("answer_1", max_tokens=24))
        s += user(question_2)
        s += assistant(gen("answer_2", max_tokens=24))

    state = multi_turn_question.run(
        question_1="What is the capital of the United States?",
        question_2="List two local attractions.",
    )
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[1]["content"] == "What is the capital of the United States?"
    assert messages[2]["content"] == state["answer_1"] and state["answer_1"].strip()
    assert messages[4]["content"] == state["answer_2"] and state["answer_2"].strip()
    assert state.get_meta_info("answer_2")["cached_tokens"] > 0  # the first turn was reused


def test_control_flow_tool_use(sgl):
    @sgl.function
    def tool_use(s, question):
        s += "To answer this question: " + question + ". "
        s += "I need to use a " + sgl.gen("tool", choices=["calculator", "search engine"]) + ". "

        if s["tool"] == "calculator":
            s += "The math expression is" + sgl.gen("expression", max_tokens=12)
        elif s["tool"] == "search engine":
            s += "The key word to search is" + sgl.gen("word", max_tokens=12)

    state = tool_use.run(question="What is 27 times 13")
    assert state["tool"] in ("calculator", "search engine")
    assert ("expression" if state["tool"] == "calculator" else "word") in state
    assert "I need to use a " + state["tool"] + ". " in state.text()
    assert len(state.get_meta_info("tool")["input_token_logprobs"]) == 2  # one list per choice


def test_parallelism_tip_suggestion(sgl):
    @sgl.function
    def tip_suggestion(s):
        s += (
            "Here are two tips for staying healthy: "
            "1. Balanced Diet. 2. Regular Exercise.\n\n"
        )

        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Now, expand tip {i+1} into a paragraph:\n"
            f += sgl.gen("detailed_tip", max_tokens=24, stop="\n\n")

        s += "Tip 1:" + forks[0]["detailed_tip"] + "\n"
        s += "Tip 2:" + forks[1]["detailed_tip"] + "\n"
        s += "In summary" + sgl.gen("summary", max_tokens=16)

    state = tip_suggestion.run()
    text = state.text()
    assert "Tip 1:" in text and "Tip 2:" in text and state["summary"]
    assert text.index("Tip 1:") < text.index("Tip 2:") < text.index("In summary")

    @sgl.function
    def tips_joined(s):  # the same with forks.join(): the children's variables become lists
        s += "Here are two tips for staying healthy: 1. Balanced Diet. 2. Regular Exercise.\n\n"
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Now, expand tip {i+1} into a paragraph:\n"
            f += sgl.gen("detailed_tip", max_tokens=16, stop="\n\n")
        forks.join()

    joined = tips_joined.run()
    assert isinstance(joined["detailed_tip"], list) and len(joined["detailed_tip"]) == 2
    assert all(isinstance(t, str) and t for t in joined["detailed_tip"])
    assert len(joined.get_meta_info("detailed_tip")) == 2


IP_REGEX = r"((25[0-5]|2[0-4]\d|[01]?\d\d?).){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"


def test_constrained_decoding_regex(sgl):
    @sgl.function
    def regular_expression_gen(s):
        s += "Q: What is the IP address of the Google DNS servers?\n"
        s += "A: " + sgl.gen(
            "answer",
            temperature=0,
            regex=IP_REGEX,
        )

    state = regular_expression_gen.run()
    assert re.fullmatch(IP_REGEX, state["answer"])
    assert state.get_meta_info("answer")["finish_reason"]["type"] == "stop"


CHARACTER_REGEX = (
    r"""\{\n"""
    + r"""    "name": "[\w\d\s]{1,16}",\n"""
    + r"""    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n"""
    + r"""    "blood status": "(Pure-blood|Half-blood|Muggle-born)",\n"""
    + r"""    "wand": \{\n"""
    + r"""        "wood": "[\w\d\s]{1,16}",\n"""
    + r"""        "length": [0-9]{1,2}\.[0-9]{0,2}\n"""
    + r"""    \},\n"""
    + r"""    "alive": "(Alive|Deceased)"\n"""
    + r"""\}"""
)  # SGLang's character_regex, a few free-text fields shorter


def test_json_decoding_with_a_regex(sgl):
    @sgl.function
    def character_gen(s, name):
        s += name + " is a character in Harry Potter. Please fill in the following information about this character.\n"  # noqa: E501
        s += sgl.gen("json_output", max_tokens=128, regex=CHARACTER_REGEX)

    state = character_gen.run(name="Hermione Granger")
    character = json.loads(state["json_output"])
    assert re.fullmatch(CHARACTER_REGEX, state["json_output"])
    assert character["house"] in ("Gryffindor", "Slytherin", "Ravenclaw", "Hufflepuff")
    assert isinstance(character["wand"]["length"], float)
    assert state.get_meta_info("json_output")["forced_tokens"] > 0  # jump-forward wrote keys


def test_json_decoding_with_a_json_schema(sgl):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "country": {"type": "string", "maxLength": 16},
            "is_capital": {"type": "boolean"},
        },
        "required": ["name", "country", "is_capital"],
        "additionalProperties": False,
    }

    @sgl.function
    def city_info(s, city):
        s += sgl.user(f"Give the name and country of {city}, and whether it is a capital, as "
                      "JSON.")
        s += sgl.assistant(sgl.gen("json_output", max_tokens=48, json_schema=json.dumps(schema)))

    state = city_info.run(city="Paris")
    info = json.loads(state["json_output"])
    assert set(info) == {"name", "country", "is_capital"}
    assert isinstance(info["is_capital"], bool) and info["name"] == "Paris"


def test_batching_run_batch(sgl):
    @sgl.function
    def text_qa(s, question):
        s += "Q: " + question + "\n"
        s += "A:" + sgl.gen("answer", stop="\n", max_tokens=16)

    states = text_qa.run_batch(
        [
            {"question": "What is the capital of the United Kingdom?"},
            {"question": "What is the capital of France?"},
            {"question": "What is the capital of Japan?"},
        ],
        progress_bar=True
    )
    assert len(states) == 3 and all(s["answer"] and "\n" not in s["answer"] for s in states)
    assert "Paris" in states[1]["answer"]
    assert [s.text().split("\n")[0] for s in states] == [
        "Q: What is the capital of the United Kingdom?", "Q: What is the capital of France?",
        "Q: What is the capital of Japan?"]


def test_streaming_text_iter(sgl):
    @sgl.function
    def text_qa(s, question):
        s += "Q: " + question + "\n"
        s += "A:" + sgl.gen("answer", stop="\n", max_tokens=16)

    state = text_qa.run(
        question="What is the capital of France?",
        temperature=0.1,
        stream=True
    )

    pieces = []
    for out in state.text_iter():
        pieces.append(out)
    assert "".join(pieces) == state.text()
    assert len(pieces) > 2  # the answer streamed in pieces
    again = text_qa.run(question="What is the capital of France?", stream=True)
    assert "".join(again.text_iter("answer")) == again["answer"]


def test_roles(sgl):
    @sgl.function
    def chat_example(s):
        s += sgl.system("You are a helpful assistant.")
        # Same as: s += s.system("You are a helpful assistant.")

        with s.user():
            s += "Question: What is the capital of France?"

        s += sgl.assistant_begin()
        s += "Answer: " + sgl.gen(max_tokens=24, stop="\n")
        s += sgl.assistant_end()

    state = chat_example.run()
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "Question: What is the capital of France?"
    assert messages[2]["content"].startswith("Answer: ") and len(messages[2]["content"]) > 8
    assert "\n" not in messages[2]["content"]
