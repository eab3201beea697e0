"""The `OpenAI` backend against a real `lmnb serve` (127.0.0.1, a random port, in this process
on the session's engine) through the real `openai` client: chat and completion models, roles,
streaming, select, constraints, run_batch, token usage, errors, and API speculative execution
(exact call counts; the same values as without it; a mismatch falls back to a call).

Greedy decoding throughout, small max_tokens: the default model decodes ~40 tokens/s here.
"""

from __future__ import annotations

import json
import re

import pytest

import lmnb as sgl
from lmnb.lang.backend.base import Prompt
from lmnb.runtime import SamplingParams
from lmnb.server import start_server

CHARACTER = ("Construct a character named {name}. Use exactly this format:\n"
             "Name: ...\nBirthday: ...\nJob: ...")


@pytest.fixture(scope="module")
def server(engine):
    srv = start_server(engine)
    yield srv
    srv.stop()


@pytest.fixture
def chat(server) -> sgl.OpenAI:
    return sgl.OpenAI("default", base_url=server.url + "/v1", max_retries=0, timeout=120)


@pytest.fixture
def completion(server) -> sgl.OpenAI:
    return sgl.OpenAI("default", base_url=server.url + "/v1", is_chat_model=False,
                      max_retries=0, timeout=120)


def character(spec_tokens: int = 0, third: str = "\nJob:"):
    """SGLang's example: three fields of a described person in one assistant turn."""

    @sgl.function(num_api_spec_tokens=spec_tokens or None)
    def program(s, name):
        s += sgl.user(CHARACTER.format(name=name))
        s += sgl.assistant("Name:" + sgl.gen("name", stop="\n", max_tokens=12)
                           + "\nBirthday:" + sgl.gen("birthday", stop="\n", max_tokens=12)
                           + third + sgl.gen("job", stop="\n", max_tokens=12))

    return program


FIELDS = ("name", "birthday", "job")


def values(state) -> list[str]:
    return [state[k] for k in FIELDS]


def finish_type(meta: dict) -> str:
    """The finish reason's type, whether meta info spells it as a string or SGLang's dict."""
    reason = meta["finish_reason"]
    return reason["type"] if isinstance(reason, dict) else reason


def spec_meta(state, name: str) -> dict:
    return state.get_meta_info(name).get("api_spec") or {}


# ---- chat models --------------------------------------------------------------------------


@sgl.function
def multi_turn(s, q1, q2):
    s += sgl.system("You are a helpful assistant. Answer in a few words.")
    s += sgl.user(q1)
    s += sgl.assistant(sgl.gen("a1", max_tokens=12))
    s += sgl.user(q2)
    s += sgl.assistant(sgl.gen("a2", max_tokens=12))


def test_chat_gen_and_roles(chat):
    state = multi_turn.run(q1="What is the capital of France?", q2="And of Italy?",
                           backend=chat)
    assert "Paris" in state["a1"]
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert messages[2]["content"] == state["a1"] and messages[4]["content"] == state["a2"]
    first, second = state.get_meta_info("a1"), state.get_meta_info("a2")
    assert first["api_calls"] == second["api_calls"] == 1
    assert finish_type(first) in ("stop", "length") and first["completion_tokens"] > 0
    # the second call sends the whole conversation; the server's cache holds the first turn
    assert second["prompt_tokens"] > first["prompt_tokens"] + first["completion_tokens"]
    assert second["cached_tokens"] >= first["prompt_tokens"]
    usage = chat.token_usage
    assert usage.num_api_calls == 2
    assert usage.prompt_tokens == first["prompt_tokens"] + second["prompt_tokens"]
    assert usage.completion_tokens == first["completion_tokens"] + second["completion_tokens"]


def test_streaming_text_iter(chat):
    state = multi_turn.run(q1="Name three colours.", q2="And two animals?", stream=True,
                           backend=chat)
    chunks = list(state.text_iter("a1"))
    assert len(chunks) > 1 and "".join(chunks) == state["a1"]


def test_repeat_reports_cached_tokens_and_reset(chat):
    @sgl.function
    def ask(s):
        s += sgl.user("Say hello to the reader in one short sentence, please.")
        s += sgl.assistant(sgl.gen("answer", max_tokens=4))

    ask.run(backend=chat).sync()
    again = ask.run(backend=chat)
    meta = again.get_meta_info("answer")
    assert meta["cached_tokens"] > 0 and meta["cached_tokens"] <= meta["prompt_tokens"]
    assert chat.token_usage.cached_tokens >= meta["cached_tokens"]
    assert chat.token_usage.num_api_calls == 2
    chat.token_usage.reset()
    assert chat.token_usage.as_dict() == dict.fromkeys(chat.token_usage.as_dict(), 0)


def test_chat_gen_after_text_continues_the_message(chat, server):
    @sgl.function
    def answer(s):
        s += sgl.user("What is the capital of France?")
        s += sgl.assistant("The capital of France is" + sgl.gen("city", max_tokens=4, stop="."))

    assert "Paris" in answer.run(backend=chat)["city"]
    refuses = sgl.OpenAI("default", base_url=server.url + "/v1", continue_final_message=False)
    with pytest.raises(sgl.ProgramError, match=r"follows text inside the assistant turn "
                       r"\('The capital of France is'\).*num_api_spec_tokens") as info:
        answer.run(backend=refuses)["city"]
    assert isinstance(info.value.__cause__, ValueError)


def test_chat_gen_outside_an_assistant_turn_is_an_error(chat):
    @sgl.function
    def inside_user(s):
        s += sgl.user("Hello" + sgl.gen("x", max_tokens=4))

    with pytest.raises(sgl.ProgramError, match="in the open 'user' turn"):
        inside_user.run(backend=chat)["x"]


def test_chat_json_schema_and_regex(chat):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}

    @sgl.function
    def person(s):
        s += sgl.user("Describe a person as JSON.")
        s += sgl.assistant(sgl.gen("person", json_schema=schema, max_tokens=32))
        s += sgl.user("Pick a year.")
        s += sgl.assistant(sgl.gen("year", regex=r"(19|20)[0-9]{2}", max_tokens=6))

    state = person.run(backend=chat)
    value = json.loads(state["person"])
    assert set(value) == {"name", "age"} and isinstance(value["age"], int)
    assert re.fullmatch(r"(19|20)[0-9]{2}", state["year"])


def test_chat_select_constrained(chat):
    @sgl.function
    def pick(s):
        s += sgl.user("Is the sky blue on a clear day? Answer yes or no.")
        s += sgl.assistant(sgl.select("answer", ["yes", "no"]))

    state = pick.run(backend=chat)
    meta = state.get_meta_info("answer")
    assert state["answer"] in ("yes", "no") and meta["method"] == "choices"
    assert meta["scores"][["yes", "no"].index(state["answer"])] == 1.0
    chat.select_methods = ("json_schema",)
    again = pick.run(backend=chat)
    assert again["answer"] in ("yes", "no")
    assert again.get_meta_info("answer")["method"] == "json_schema"


def test_run_batch(chat):
    questions = ["What is 2 + 2?", "Name a fruit.", "Name a planet."]

    @sgl.function
    def qa(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("answer", max_tokens=6))

    states = qa.run_batch([{"question": q} for q in questions], backend=chat)
    assert all(s["answer"] for s in states)
    assert chat.token_usage.num_api_calls == len(questions)


# ---- completion models --------------------------------------------------------------------


def test_completion_gen_stop_and_regex(completion):
    @sgl.function
    def facts(s):
        s += "Q: What is the capital of France?\nA:"
        s += sgl.gen("capital", max_tokens=8, stop="\n")
        s += "\nQ: In which year did the Second World War end?\nA: "
        s += sgl.gen("year", regex=r"[0-9]{4}", max_tokens=6)

    state = facts.run(backend=completion)
    assert "Paris" in state["capital"] and "\n" not in state["capital"]
    assert re.fullmatch(r"[0-9]{4}", state["year"])
    assert state.text().endswith(state["year"])
    assert completion.token_usage.num_api_calls == 2


def test_completion_select_scores_choices(completion):
    @sgl.function
    def city(s):
        s += "The capital of France is"
        s += sgl.select("city", [" Paris", " London", " Berlin"])

    state = city.run(backend=completion)
    meta = state.get_meta_info("city")
    assert state["city"] == " Paris" and meta["method"] == "prompt_logprobs"
    assert meta["api_calls"] == 1 and len(meta["input_token_logprobs"]) == 3
    assert max(meta["scores"]) == meta["scores"][0] < 0

    @sgl.function
    def city_unconditional(s):
        s += "The capital of France is"
        s += sgl.select("city", [" Paris", " London"],
                        choices_method=sgl.unconditional_likelihood_normalized)

    meta = city_unconditional.run(backend=completion).get_meta_info("city")
    assert meta["api_calls"] == 2 and meta["unconditional_token_logprobs"] is not None


def test_completion_select_falls_back_when_a_method_is_refused(completion, engine):
    """lmnb serve refuses logit_bias: select moves on to a constrained generation."""
    completion.select_methods = ("logit_bias", "choices")
    completion.logit_bias_tokenizer = engine.tokenizer

    @sgl.function
    def city(s):
        s += "The capital of France is"
        s += sgl.select("city", [" Paris", " London"])

    state = city.run(backend=completion)
    meta = state.get_meta_info("city")
    assert state["city"] == " Paris" and meta["method"] == "choices"
    assert "logit_bias" in meta["refused"][0]


# ---- errors -------------------------------------------------------------------------------


def test_bad_api_key_is_a_permission_error(engine):
    srv = start_server(engine, api_key="the-key")
    try:
        wrong = sgl.OpenAI("default", base_url=srv.url + "/v1", api_key="not-the-key",
                           max_retries=0)
        with pytest.raises(sgl.ProgramError, match=r"refused the request \(401\)") as info:
            multi_turn.run(q1="Hi", q2="Bye", backend=wrong)["a1"]
        assert isinstance(info.value.__cause__, PermissionError)
        right = sgl.OpenAI("default", base_url=srv.url + "/v1", api_key="the-key")
        assert multi_turn.run(q1="Hi", q2="Bye", backend=right)["a1"]
    finally:
        srv.stop()


def test_a_400_names_the_server_message(completion):
    @sgl.function
    def bad(s):
        s += "Some text"
        s += sgl.gen("x", regex="a(b", max_tokens=4)

    with pytest.raises(sgl.ProgramError, match=r"refused the request \(400\): .*regex") as info:
        bad.run(backend=completion)["x"]
    assert isinstance(info.value.__cause__, ValueError)


def test_cancel_closes_the_stream(chat):
    prompt = Prompt([], "", [{"role": "user", "content": "Count from 1 to 200."}], "assistant")
    handle = chat.generate(prompt, SamplingParams(max_new_tokens=200))
    chunks = iter(handle)
    first = next(chunks)
    handle.cancel()
    rest = list(chunks)
    result = handle.result()
    assert first.text and result.finish_reason == "abort" and len(rest) < 100


# ---- API speculative execution ------------------------------------------------------------


def test_speculation_fills_a_turn_with_one_call(chat):
    plain = character().run(name="Harry Potter", backend=chat)
    expected = values(plain)
    assert chat.token_usage.num_api_calls == 3 and all(expected)
    billed_without = chat.token_usage.prompt_tokens
    chat.token_usage.reset()

    state = character(64).run(name="Harry Potter", backend=chat)
    assert values(state) == expected
    usage = chat.token_usage
    assert (usage.num_api_calls, usage.saved_api_calls) == (1, 2)
    assert usage.prompt_tokens < billed_without / 2
    assert spec_meta(state, "name") == {"served": False, "call": "speculative", "reason": None,
                                        "value_tokens": spec_meta(state, "name")["value_tokens"]}
    assert [spec_meta(state, k)["served"] for k in FIELDS] == [False, True, True]
    assert [state.get_meta_info(k)["api_calls"] for k in FIELDS] == [1, 0, 0]
    assert state.messages()[-1]["content"] == (f"Name:{expected[0]}\nBirthday:{expected[1]}"
                                               f"\nJob:{expected[2]}")


def test_speculation_mismatch_falls_back_to_a_call(chat):
    """The model writes "Job:" where the program has "Hobby:": that gen calls on its own."""
    expected = values(character(third="\nHobby:").run(name="Harry Potter", backend=chat))
    chat.token_usage.reset()
    state = character(64, third="\nHobby:").run(name="Harry Potter", backend=chat)
    assert values(state) == expected
    assert chat.token_usage.num_api_calls == 2 and chat.token_usage.saved_api_calls == 1
    job = spec_meta(state, "job")
    assert job == {"served": False, "call": "fallback", "reason": "mismatch",
                   "value_tokens": job["value_tokens"]}


def test_speculation_running_out_calls_again(chat):
    """Too few speculative tokens for the whole turn: the gen past them calls (and its call
    speculates for the rest)."""
    expected = values(character().run(name="Harry Potter", backend=chat))
    chat.token_usage.reset()
    state = character(8).run(name="Harry Potter", backend=chat)
    assert values(state) == expected
    reasons = [spec_meta(state, k).get("reason") for k in FIELDS]
    assert "ran out" in reasons and chat.token_usage.num_api_calls >= 2
    # fewer speculative tokens than the first value needs: its own call cannot serve it
    tiny = character(2).run(name="Harry Potter", backend=chat)
    assert values(tiny) == expected
    name = tiny.get_meta_info("name")
    assert name["api_calls"] == 2 and name["api_spec"]["reason"] == "ran out"


def test_speculation_with_text_after_the_last_gen_and_a_later_turn(chat):
    @sgl.function(num_api_spec_tokens=48)
    def two_turns(s):
        s += sgl.user(CHARACTER.format(name="Harry Potter"))
        s += sgl.assistant("Name:" + sgl.gen("name", stop="\n", max_tokens=12) + "\nBirthday:"
                           + sgl.gen("birthday", stop="\n", max_tokens=12) + "\n(end)")
        s += sgl.user("Now say the name again.")
        s += sgl.assistant(sgl.gen("again", max_tokens=8))

    state = two_turns.run(backend=chat)
    messages = state.messages()
    assert messages[1]["content"] == f"Name:{state['name']}\nBirthday:{state['birthday']}\n(end)"
    assert messages[3]["content"] == state["again"]
    # one call for the first turn, one for the second; the first turn's output is dropped
    assert chat.token_usage.num_api_calls == 2 and chat.token_usage.saved_api_calls == 1
    assert spec_meta(state, "again")["call"] == "speculative"
    assert len(chat.specs) == 0


def test_speculation_without_continuing_messages(server, chat):
    """A server that does not continue a partial message: the first gen opens the turn and
    the later ones are served from its output (the paper's setting, e.g. OpenAI's API); a
    mismatch then has no call to fall back on, and says so."""

    def fruits(second: str):
        @sgl.function(num_api_spec_tokens=32)
        def program(s):
            s += sgl.user("List three fruits, one per line.")
            s += sgl.assistant(sgl.gen("first", stop="\n", max_tokens=8) + second
                               + sgl.gen("second", stop="\n", max_tokens=8) + "\n3."
                               + sgl.gen("third", stop="\n", max_tokens=8))
        return program

    expected = fruits("\n2.").run(backend=chat)
    fresh = sgl.OpenAI("default", base_url=server.url + "/v1", continue_final_message=False)
    state = fruits("\n2.").run(backend=fresh)
    names = ["first", "second", "third"]
    assert [state[k] for k in names] == [expected[k] for k in names]
    assert all(state[k] for k in names)
    assert fresh.token_usage.num_api_calls == 1
    assert [spec_meta(state, k)["served"] for k in names] == [False, True, True]
    with pytest.raises(sgl.ProgramError, match=r"speculation missed here \(mismatch: the model "
                       r"wrote '2\. Apple.*' where the program has 'Second:'\)"):
        fruits("\nSecond:").run(backend=fresh)["second"]


def test_select_served_from_speculation(chat):
    @sgl.function(num_api_spec_tokens=64)
    def pick_job(s):
        s += sgl.user(CHARACTER.format(name="Harry Potter"))
        s += sgl.assistant("Name:" + sgl.gen("name", stop="\n", max_tokens=12)
                           + "\nBirthday:" + sgl.gen("birthday", stop="\n", max_tokens=12)
                           + "\nJob:" + sgl.select("job", [" Doctor", " Teacher"]))

    expected = values(character().run(name="Harry Potter", backend=chat))
    assert expected[2] == " Teacher"
    chat.token_usage.reset()
    state = pick_job.run(backend=chat)
    assert values(state) == expected
    assert state.get_meta_info("job")["method"] == "speculation"
    assert chat.token_usage.num_api_calls == 1 and chat.token_usage.saved_api_calls == 2


def test_a_server_refusing_to_continue_is_remembered(server, monkeypatch):
    """Where the server refuses `continue_final_message` (here: a field it does not know),
    the backend says what the program asked for, remembers, and speculation opens turns
    afresh instead."""
    import lmnb.lang.backend.api_request as api_request

    monkeypatch.setattr(api_request, "CONTINUE", {"continue_final_message_v0": True})
    backend = sgl.OpenAI("default", base_url=server.url + "/v1", max_retries=0)

    @sgl.function
    def answer(s):
        s += sgl.user("What is the capital of France?")
        s += sgl.assistant("The capital of France is" + sgl.gen("city", max_tokens=4))

    with pytest.raises(sgl.ProgramError, match=r"does not continue a partial one "
                       r"\(continue_final_message\) \(the server said: .*v0"):
        answer.run(backend=backend)["city"]
    assert backend.continue_final_message is False
    assert backend.token_usage.num_api_calls == 0

    @sgl.function(num_api_spec_tokens=32)
    def fruits(s):
        s += sgl.user("List three fruits, one per line.")
        s += sgl.assistant("1." + sgl.gen("first", stop="\n", max_tokens=8) + "\n2."
                           + sgl.gen("second", stop="\n", max_tokens=8))

    speculating = sgl.OpenAI("default", base_url=server.url + "/v1", max_retries=0)
    state = fruits.run(backend=speculating)
    assert state["first"].strip() and state["second"].strip()
    assert speculating.continue_final_message is False
    assert speculating.token_usage.num_api_calls == 1  # the refused request costs no call
