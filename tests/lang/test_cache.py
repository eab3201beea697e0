"""Cache behaviour seen from programs: batches, forks and chat turns hit the radix cache."""

from __future__ import annotations

import lmnb as lm

COUNTRIES = [
    "France", "Japan", "Italy", "Spain", "Germany", "China", "Russia", "Egypt",
    "Canada", "Mexico", "Brazil", "India", "Greece", "Turkey", "Poland", "Sweden",
    "Norway", "Finland", "Ireland", "Portugal", "Austria", "Hungary", "Peru", "Chile",
    "Kenya", "Cuba", "Iran", "Iraq", "Israel", "Thailand", "Vietnam", "Australia",
]  # fmt: skip

EXAMPLES = "".join(
    f"Q: What is the capital of {country}?\nA: {city}\n"
    for country, city in [
        ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
        ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Greece", "Athens"), ("Peru", "Lima"),
    ]
)  # fmt: skip


@lm.function
def few_shot(s, country):
    s += "The following are questions with answers.\n\n" + EXAMPLES
    s += "Q: What is the capital of " + country + "?\n"
    s += "A:" + lm.gen("answer", max_tokens=4, stop="\n")


def test_run_batch_of_32_hits_the_shared_prefix(stats_delta):
    states = few_shot.run_batch([{"country": c} for c in COUNTRIES])
    delta = stats_delta()
    assert all(isinstance(s["answer"], str) for s in states)
    assert states[0]["answer"].strip() == "Paris"
    hit_rate = delta["cached_tokens"] / delta["prompt_tokens"]
    assert hit_rate >= 0.8, delta


def test_trace_prefix_is_what_every_run_starts_with(runtime):
    prefix_len = few_shot.prefill_constant_prefix(runtime)
    state = few_shot.run(country="Chile")
    constant = "The following are questions with answers.\n\n" + EXAMPLES
    assert runtime.tokenizer.decode(state.token_ids()[:prefix_len]) == constant
    meta = state.get_meta_info("answer")
    assert meta["cached_tokens"] >= prefix_len


@lm.function
def forked(s):
    s += "Here are three short facts about the ocean, each on its own line:\n"
    forks = s.fork(3)
    forks += lambda i: f"Fact {i + 1}:" + lm.gen("fact", max_tokens=6, stop="\n")
    forks.join()


def test_fork_children_each_hit_the_whole_shared_prefix():
    state = forked.run()
    (fork,) = [e for e in state.events() if e.kind == "fork"]
    metas = state.get_meta_info("fact")
    assert len(metas) == 3
    for meta in metas:
        assert meta["cached_tokens"] >= fork.data["prefix_len"]


@lm.function
def chat(s):
    s += lm.user("What is the capital of France? Answer in one sentence.")
    s += lm.assistant(lm.gen("answer_1", max_tokens=32))
    s += lm.user("And of Italy?")
    s += lm.assistant(lm.gen("answer_2", max_tokens=8))


def test_second_chat_turn_hits_the_first_turn_with_its_generated_tokens():
    state = chat.run()
    first, second = state.get_meta_info("answer_1"), state.get_meta_info("answer_2")
    assert first["finish_reason"]["type"] == "stop"
    assert second["cached_tokens"] >= first["prompt_tokens"] + first["completion_tokens"]
