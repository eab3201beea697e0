"""Programs in the style of SGLang's frontend tests, on the default model (greedy)."""

from __future__ import annotations

import json
import re

import pytest

import lmnb as sgl  # the SGLang spelling must work unchanged

pytestmark = pytest.mark.usefixtures("runtime")

FEW_SHOT = (
    "The following are questions with answers.\n\n"
    "Q: What is the capital of Germany?\nA: Berlin\n"
    "Q: What is the capital of Italy?\nA: Rome\n"
    "Q: What is the capital of Spain?\nA: Madrid\n"
)


@sgl.function
def few_shot_qa(s, question):
    s += FEW_SHOT
    s += "Q: " + question + "\n"
    s += "A:" + sgl.gen("answer", max_tokens=8, stop="\n")


def test_few_shot_qa_single_and_batch():
    state = few_shot_qa.run(question="What is the capital of France?")
    assert state["answer"].strip() == "Paris"
    assert state.text().endswith("A: Paris")

    states = few_shot_qa.run_batch(
        [
            {"question": "What is the capital of France?"},
            {"question": "What is the capital of Japan?"},
        ]
    )
    answers = [s["answer"].strip() for s in states]
    assert answers == ["Paris", "Tokyo"]


@sgl.function
def multi_turn(s, question_1, question_2):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=16))
    with s.user():
        s += question_2
    with s.assistant():
        s += sgl.gen("answer_2", max_tokens=16)


def test_multi_turn_chat_with_role_blocks():
    state = multi_turn.run(question_1="What is the capital of France? Answer in one sentence.",
                           question_2="And of Italy?")
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == state["answer_1"]
    assert messages[4]["content"] == state["answer_2"]
    assert "Paris" in state["answer_1"]
    assert state.text().count("<|im_start|>") == 5


@sgl.function
def capital_select(s, country):
    s += f"The capital of {country} is" + sgl.select("city", [" Paris", " London", " Berlin"])


@sgl.function
def true_or_false(s, statement):
    s += "Determine whether the statement below is True, False, or Unknown.\n"
    s += "Statement: The capital of France is Pairs.\n"
    s += "Answer: True\n"
    s += "Statement: " + statement + "\n"
    s += "Answer:" + sgl.select("answer", ["True", "False", "Unknown"])


def test_select_true_false_unknown():
    state = true_or_false.run(statement="The capital of Germany is Berlin.")
    meta = state.get_meta_info("answer")
    assert state["answer"] in ["True", "False", "Unknown"]
    assert len(meta["scores"]) == 3 and len(meta["input_token_logprobs"]) == 3
    assert state["answer"] == meta["choices"][meta["scores"].index(max(meta["scores"]))]
    assert state.text().endswith("Answer:" + state["answer"])


@pytest.mark.parametrize(
    "method",
    [
        "token_length_normalized",
        sgl.greedy_token_selection,
        sgl.unconditional_likelihood_normalized,
    ],
)
def test_select_methods_find_paris(method):
    @sgl.function
    def capital(s):
        s += "The capital of France is" + sgl.select(
            "city", [" Paris", " London", " Berlin"], choices_method=method
        )

    state = capital.run()
    assert state["city"] == " Paris"
    meta = state.get_meta_info("city")
    assert len(meta["scores"]) == 3
    if method is sgl.unconditional_likelihood_normalized:
        # per choice (logprob, token_id, text) triples; the first token has no logprob
        assert [lps[0][0] for lps in meta["unconditional_token_logprobs"]] == [None] * 3


@sgl.function
def decode_int(s):
    s += "The number of hours in a day is " + sgl.gen_int("hours", max_tokens=4) + ".\n"
    s += "The number of days in a week is " + sgl.gen_int("days", max_tokens=4) + ".\n"


def test_gen_int_hours_in_a_day():
    state = decode_int.run()
    assert re.fullmatch(r"-?\d+", state["hours"]) and re.fullmatch(r"-?\d+", state["days"])
    assert int(state["hours"]) == 24
    assert int(state["days"]) == 7


@sgl.function
def decode_json(s, city):
    s += "Describe the basic city information of a city as a JSON object.\n"
    s += 'Berlin:\n{\n  "name": "Berlin",\n  "population": 3645000,\n  "area": 891,\n'
    s += '  "country": "Germany"\n}\n'
    s += city + ":\n"
    with s.var_scope("json_output"):
        s += "{\n"
        s += '  "name": ' + sgl.gen_string(max_tokens=8) + ",\n"
        s += '  "population": ' + sgl.gen_int(max_tokens=8) + ",\n"
        s += '  "area": ' + sgl.gen(dtype=int, max_tokens=8) + ",\n"
        s += '  "country": ' + sgl.gen_string(max_tokens=8) + "\n"
        s += "}"


def test_json_from_typed_gens_in_var_scope():
    state = decode_json.run(city="Paris")
    obj = json.loads(state["json_output"])
    assert obj["name"] == "Paris" and obj["country"] == "France"
    assert isinstance(obj["name"], str) and isinstance(obj["country"], str)
    assert isinstance(obj["population"], int) and isinstance(obj["area"], int)
    assert state.text().endswith(state["json_output"])


@sgl.function
def expert_answer(s, question):
    s += "Question: " + question + "\n"
    s += "A good person to answer this question is" + sgl.gen("expert", 12, stop=[".", "\n"])
    s += ".\n"
    s += "For example," + s["expert"] + " would answer that " + sgl.gen("answer", 12, stop=".")
    s += "."


def test_expert_answer_reads_a_variable_mid_program():
    state = expert_answer.run(question="What is the capital of France?")
    assert state["expert"] and "." not in state["expert"]
    assert state["answer"] and "." not in state["answer"]
    expected = f"For example,{state['expert']} would answer that {state['answer']}."
    assert state.text().endswith(expected)


def calculate(expression: str) -> str:
    return str(eval(expression, {"__builtins__": {}}))


@sgl.function
def tool_use(s, lhs, rhs):
    s += "Please perform computations using a calculator. "
    s += "You can use calculate(expression) to get the results.\n"
    s += "For example,\ncalculate(1+2)=3\ncalculate(3*4)=12\n"
    s += "Question: What is the product of " + str(lhs) + " and " + str(rhs) + "?\n"
    s += "Answer: The answer is calculate(" + sgl.gen("expression", 12, stop=")") + ") = "
    with s.var_scope("answer"):
        s += calculate(s["expression"])


def test_tool_use_computes_with_a_generated_expression():
    # 257 and 983 sit on an edge of this small model's greedy choice: fp32 writes 257*983,
    # bf16 15*257 (with and without the cache); both dtypes copy 123 and 456 correctly.
    state = tool_use(lhs=123, rhs=456)
    assert state["expression"].replace(" ", "") == "123*456"
    assert int(state["answer"]) == 123 * 456
    assert state.text().endswith(f") = {123 * 456}")


@sgl.function
def react(s, question):
    s += (
        "Question: Which country does the founder of Microsoft live in?\n"
        "Thought 1: I need to search for the founder of Microsoft.\n"
        "Action 1: Search [Founder of Microsoft].\n"
        "Observation 1: The founder of Microsoft is Bill Gates.\n"
        "Thought 2: I need to search for the country where Bill Gates lives in.\n"
        "Action 2: Search [Where does Bill Gates live].\n"
        "Observation 2: Bill Gates lives in the United States.\n"
        "Thought 3: The answer is the United States.\n"
        "Action 3: Finish [United States].\n\n"
    )
    s += "Question: " + question + "\n"
    for i in range(1, 4):
        s += f"Thought {i}:" + sgl.gen(f"thought_{i}", 16, stop=[".", "\n"]) + ".\n"
        s += f"Action {i}: " + sgl.select(f"action_{i}", ["Search", "Finish"])
        if s[f"action_{i}"] == "Search":
            s += " [" + sgl.gen(max_tokens=12, stop="]") + "].\n"
            s += f"Observation {i}:" + sgl.gen(max_tokens=16, stop=[".", "\n"]) + ".\n"
        else:
            s += " [" + sgl.gen("answer", 12, stop="]") + "].\n"
            break


def test_react_loop_selects_actions():
    state = react.run(question="What country does the creator of Linux live in?")
    actions = [state[f"action_{i}"] for i in range(1, 4) if f"action_{i}" in state]
    assert actions and all(a in ("Search", "Finish") for a in actions)
    assert ("answer" in state) == (actions[-1] == "Finish")
    for i, action in enumerate(actions, start=1):
        assert f"Action {i}: {action} [" in state.text()


@sgl.function
def parallel_decoding(s, topic, fork_size=3):
    s += "Act as a helpful assistant.\n"
    s += "USER: Give some tips for " + topic + ".\n"
    s += f"ASSISTANT: Okay. Here are {fork_size} concise tips, each under 8 words:\n"
    for i in range(1, 1 + fork_size):
        s += f"{i}." + sgl.gen(f"tip_{i}", max_tokens=12, stop=[".", "\n"]) + ".\n"
    forks = s.fork(fork_size)
    for i in range(fork_size):
        forks[i] += f"Now, I expand tip {i + 1} into a detailed paragraph:\nTip {i + 1}:"
        forks[i] += sgl.gen("detailed_tip", max_tokens=16, stop=["\n\n"])
    forks.join()
    s += "Here are these tips with detailed explanation:\n"
    for i in range(fork_size):
        s += f"Tip {i + 1}:" + forks[i]["detailed_tip"] + "\n"
    s += "\nIn summary," + sgl.gen("summary", max_tokens=16)


def test_parallel_decoding_with_fork_join():
    state = parallel_decoding.run(topic="writing a good blog post")
    tips = state["detailed_tip"]
    assert isinstance(tips, list) and len(tips) == 3 and all(isinstance(t, str) for t in tips)
    for i, tip in enumerate(tips, start=1):
        assert f"Tip {i}:{tip}\n" in state.text()
    assert isinstance(state["summary"], str) and state["summary"]
    metas = state.get_meta_info("detailed_tip")
    assert len(metas) == 3 and all(m["completion_tokens"] > 0 for m in metas)


@sgl.function
def parallel_encoding(s, question, contexts):
    s += sgl.system("You are a helpful assistant. Answer with one name.")
    with s.user():
        s += "Please memorize these statements.\n"
        forks = s.fork(len(contexts))
        forks += lambda i: f"Statement {i}: " + contexts[i] + "\n"
        forks.join(mode="concate_and_append")
        s += "Question: " + question
    s += sgl.assistant(sgl.gen("answer", max_tokens=16))


def test_parallel_encoding_with_concate_and_append():
    contexts = [
        "Ethan is the father of Liam.",
        "Noah is the father of Julian.",
        "Oliver is the father of Carlos.",
    ]
    state = parallel_encoding.run(question="Who is the father of Liam?", contexts=contexts)
    statements = "".join(f"Statement {i}: {c}\n" for i, c in enumerate(contexts))
    user = state.messages()[1]
    assert user["role"] == "user"
    assert user["content"] == "Please memorize these statements.\n" + statements + (
        "Question: Who is the father of Liam?"
    )
    assert "Ethan" in state["answer"]


@sgl.function
def qa(s, question):
    s += sgl.system("You are a helpful assistant.")
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=16))


def test_streaming_with_text_iter():
    state = qa.run(question="What is the capital of France?", stream=True)
    chunks = list(state.text_iter())
    assert len(chunks) > 3
    assert "".join(chunks) == state.text()

    state = qa(question="What is the capital of France?", stream=True)
    answer_chunks = list(state.text_iter("answer"))
    assert len(answer_chunks) > 1
    assert "".join(answer_chunks) == state["answer"]


IP_REGEX = r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)"


@sgl.function
def regex_gen(s):
    s += "Q: What is the IP address of the Google DNS servers?\n"
    s += "A: " + sgl.gen("answer", max_tokens=16, regex=IP_REGEX)


def test_regex_gen():
    state = regex_gen.run()
    assert re.fullmatch(IP_REGEX, state["answer"])


@sgl.function
def dtype_gen(s):
    s += "Q: What is the full name of DNS?\n"
    s += "A: The full name is " + sgl.gen("str_res", 16, dtype=str, stop="\n") + "\n"
    s += "Q: Which year was DNS invented?\n"
    s += "A: " + sgl.gen("int_res", 6, dtype=int) + "\n"
    s += "Q: What is the value of pi?\n"
    s += "A: " + sgl.gen("float_res", 8, dtype=float) + "\n"
    s += "Q: Is the sky blue?\n"
    s += "A: " + sgl.gen("bool_res", 4, dtype=bool) + "\n"


def test_dtype_gens():
    state = dtype_gen.run()
    assert re.fullmatch(r'"[^"\\\n]*"', state["str_res"])
    state["int_res"] = int(state["int_res"])
    state["float_res"] = float(state["float_res"])
    assert state["bool_res"] in ("True", "False")
    assert isinstance(state["int_res"], int) and isinstance(state["float_res"], float)
    assert state["float_res"] == pytest.approx(3.14, abs=0.01)
