"""`lmnb.testing.ScriptedBackend`: the scripted stand-in for a model, and programs on it
(select, constraints, stops, forks, cancellation) the way users' own tests would run them."""

from __future__ import annotations

import re
import time

import pytest

import lmnb as lm
from lmnb.lang.control import Cancelled
from lmnb.runtime.params import SamplingParams
from lmnb.testing import MATCH_LOGPROB, MISS_LOGPROB, ScriptedBackend, WordTokenizer


def test_word_tokenizer_round_trips_and_keeps_specials_whole():
    tok = WordTokenizer()
    text = "<|im_start|>user\nHello, world!  It's 24.5 <|im_end|>\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.pieces("The capital is Paris.") == ["The", " capital", " is", " Paris", "."]
    assert tok.encode("<|im_start|>")[0] == 1 and tok.eos_token_id == 0
    assert tok.decode(ids, skip_special_tokens=True) == "user\nHello, world!  It's 24.5 \n"
    assert tok.encode(" Paris") == tok.encode(" Paris")  # ids are stable


def test_script_forms():
    assert ScriptedBackend(" yes").reply("anything") == " yes"
    assert ScriptedBackend(lambda p: p.upper()).reply("ab") == "AB"
    table = ScriptedBackend({"France": " Paris", "Italy": " Rome", "capital of Italy": " Roma"})
    assert table.reply("France? Italy?") == " Rome"  # the key that occurs latest
    assert table.reply("The capital of Italy") == " Roma"  # the longest on a tie
    assert table.reply("Spain") == ""
    assert ScriptedBackend().reply("x").startswith(" The quick brown fox")


def test_generate_honours_max_tokens_stops_and_eos():
    backend = ScriptedBackend(" one two three. four")
    out = backend.generate("Count:", SamplingParams(max_new_tokens=2)).result()
    assert (out.text, out.finish_reason, out.completion_tokens) == (" one two", "length", 2)
    out = backend.generate("Count:", SamplingParams(stop=".")).result()
    assert (out.text, out.finish_reason, out.matched_stop) == (" one two three", "stop", ".")
    out = backend.generate("Count:", SamplingParams(stop="hre")).result()  # inside a token
    assert out.text == " one two t" and out.text_tail == " t"
    assert backend.tokenizer.decode(out.text_ids) == " one two"
    out = backend.generate("Count:", SamplingParams()).result()
    assert out.text == " one two three. four" and out.matched_stop == 0  # EOS
    out = backend.generate("Count:", SamplingParams(max_new_tokens=9, ignore_eos=True)).result()
    assert out.completion_tokens == 9 and out.finish_reason == "length"
    chunks = list(backend.generate("Count:", SamplingParams(stop=" four")))
    assert "".join(c.text for c in chunks) == " one two three."


def test_generate_refuses_what_the_engine_refuses():
    backend = ScriptedBackend(max_context=16)
    with pytest.raises(ValueError, match="empty"):
        backend.generate([], SamplingParams())
    with pytest.raises(ValueError, match="longer than the context"):
        backend.generate("word " * 20, SamplingParams())


def test_constraints_take_the_longest_matching_prefix_of_the_reply():
    backend = ScriptedBackend("24 hours, I think")
    out = backend.generate("Hours:", SamplingParams(regex=r"[0-9]+[ .]")).result()
    assert (out.text, out.finish_reason) == ("24 ", "stop")
    out = backend.generate("Hours:", SamplingParams(choices=("2", "24", "24 hours"))).result()
    assert out.text == "24 hours"
    backend.script = "24"  # the reply ends inside the constraint: as if out of tokens
    out = backend.generate("Hours:", SamplingParams(regex=r"[0-9]+[ .]")).result()
    assert (out.text, out.finish_reason) == ("24", "length")
    backend.script = "many"
    with pytest.raises(ValueError, match="no prefix of the scripted reply 'many'"):
        backend.generate("Hours:", SamplingParams(regex=r"[0-9]+"))


def test_prompt_logprobs_follow_the_reply_and_the_cache_counts_hits():
    backend = ScriptedBackend({"is": " Paris is nice"})
    prefix = backend.tokenizer.encode("The capital of France is")
    params = SamplingParams(max_new_tokens=0, logprob_start_len=len(prefix))
    good = backend.generate(prefix + backend.tokenizer.encode(" Paris is"), params).result()
    bad = backend.generate(prefix + backend.tokenizer.encode(" Rome is"), params).result()
    assert good.prompt_logprobs == [MATCH_LOGPROB, MATCH_LOGPROB]
    assert bad.prompt_logprobs == [MISS_LOGPROB, MISS_LOGPROB]
    assert good.cached_tokens == 0 and bad.cached_tokens == len(prefix) - 1
    again = backend.generate(prefix, SamplingParams(max_new_tokens=3)).result()
    assert again.cached_tokens == len(prefix) - 1  # the last prompt token is always computed
    follow = backend.generate(prefix + again.output_ids + [5], SamplingParams()).result()
    assert follow.cached_tokens == len(prefix) + 3  # generated tokens were inserted too
    backend.flush_cache()
    assert backend.generate(prefix, SamplingParams()).result().cached_tokens == 0
    stats = backend.stats()
    assert stats["num_requests"] == 5 and stats["cached_tokens"] > 0
    assert [r.prompt for r in backend.requests][-1] == "The capital of France is"


ANSWERS = {
    "capital of France is": " Paris",
    "hours in a day:": "24.",
    "Is it true?": " False",
    "Name:": '"Ada"',
    "Hi": " Hello there, how are you?",
}


@lm.function
def quiz(s):
    s += "The capital of France is" + lm.select("city", [" London", " Paris", " Rome"])
    s += "\nThe number of hours in a day: " + lm.gen_int("hours")
    s += "\nIs it true?" + lm.select("truth", [" True", " False"],
                                     choices_method=lm.unconditional_likelihood_normalized)
    s += "\nName: " + lm.gen_string("name")
    s += "\n" + lm.user("Hi") + lm.assistant(lm.gen("reply", max_tokens=3))


def test_a_program_on_a_scripted_backend():
    backend = ScriptedBackend(ANSWERS)
    state = quiz.run(backend=backend)
    assert (state["city"], state["hours"], state["truth"]) == (" Paris", "24", " False")
    assert state["name"] == '"Ada"'
    assert state["reply"] == " Hello there,"  # cut at 3 tokens
    assert state.text().endswith("<|im_start|>assistant\n Hello there,<|im_end|>\n")
    assert backend.tokenizer.decode(state.token_ids()) == state.text()
    meta = state.get_meta_info("city")
    assert meta["scores"] == [MISS_LOGPROB, MATCH_LOGPROB, MISS_LOGPROB]
    assert backend.prompts[0].endswith("The number of hours in a day: ")


def test_forks_hit_the_committed_prefix_and_see_their_own_text():
    backend = ScriptedBackend(lambda prompt: " " + prompt.split()[-1].upper())

    @lm.function
    def shout(s):
        s += "Words:"
        forks = s.fork(3)
        forks += lambda i: f" {['red', 'green', 'blue'][i]}" + lm.gen("loud", max_tokens=1)
        forks.join()

    state = shout.run(backend=backend)
    assert state["loud"] == [" RED", " GREEN", " BLUE"]
    assert all(m["cached_tokens"] >= 2 for m in state.get_meta_info("loud"))


def test_cancel_aborts_the_running_requests_of_a_program_and_its_forks():
    backend = ScriptedBackend(delay=0.05)  # FILLER replies, 20 tokens a second

    @lm.function
    def slow(s):
        s += "Go:"
        forks = s.fork(2)
        forks += lm.gen("words", max_tokens=200, ignore_eos=True)
        forks.join()
        s += lm.gen("after")

    state = slow.run(stream=True, backend=backend)
    deadline = time.time() + 10
    while len([r for r in backend.requests if r.params.max_new_tokens]) < 2:
        assert time.time() < deadline
        time.sleep(0.01)
    assert state.cancel() == 2
    assert isinstance(state.error().cause, Cancelled) and state.finished()
    deadline = time.time() + 10
    while not all(r.result for r in backend.requests):
        assert time.time() < deadline
        time.sleep(0.01)
    aborted = [r.result for r in backend.requests if r.params.max_new_tokens]
    assert [r.finish_reason for r in aborted] == ["abort", "abort"]
    assert all(r.completion_tokens < 200 for r in aborted)
    assert backend.stats()["aborted"] == 2
    with pytest.raises(lm.ProgramError):
        state["words"]


def test_streaming_on_a_slow_backend_arrives_in_pieces():
    backend = ScriptedBackend(" one two three four", delay=0.01)

    @lm.function
    def count(s):
        s += "Count:" + lm.gen("n", max_tokens=8)

    state = count.run(stream=True, backend=backend)
    chunks = list(state.text_iter("n"))
    assert chunks == [" one", " two", " three", " four"]
    assert re.fullmatch(r"Count: one two three four", state.text())
