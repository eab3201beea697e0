"""Engine behaviour on the real default model: reuse, memory pressure, streaming, bad input."""

from __future__ import annotations

import threading

import pytest
import torch

from lmnb.runtime import Engine, SamplingParams
from tests.conftest import assert_slots_accounted, wait_idle

SHARED = (
    "You are a careful assistant. Answer each question with one short sentence. "
    "Here are some examples of questions and answers about geography and science.\n"
)
QUESTIONS = [
    "Q: What is the capital of Italy?\nA:",
    "Q: What is the capital of Spain?\nA:",
    "Q: What is the boiling point of water?\nA:",
    "Q: Why is the sky blue?\nA:",
]


def shared_prefix_prompts() -> list[str]:
    """16 prompts: identical ones, ones diverging mid-node, and unrelated ones."""
    prompts = [SHARED + q for q in QUESTIONS]  # share a long prefix
    prompts += [SHARED + QUESTIONS[0]] * 3  # identical
    prompts += [SHARED[:40] + " Different tail " + str(i) for i in range(4)]  # mid-node split
    prompts += [f"Unrelated prompt number {i}: count to five." for i in range(5)]
    return prompts


@pytest.fixture(scope="module")
def no_cache_engine() -> Engine:
    eng = Engine(disable_radix_cache=True, max_tokens_in_cache=4096, chunk_tokens=48)
    yield eng
    eng.shutdown()


def run_all(eng: Engine, prompts: list[str], **kw) -> list[list[int]]:
    handles = [eng.generate(p, max_new_tokens=kw.pop("max_new_tokens", 16), **kw)
               for p in prompts]
    return [h.result(timeout=300).output_ids for h in handles]


def test_cache_on_equals_cache_off_and_slots_come_back(engine, no_cache_engine) -> None:
    prompts = shared_prefix_prompts()
    engine.flush_cache()
    before = engine.stats()
    with_cache = run_all(engine, prompts)
    without = run_all(no_cache_engine, prompts)
    assert with_cache == without
    after = engine.stats()
    assert after["cached_tokens"] > before["cached_tokens"]  # the shared prefix was reused
    wait_idle(engine)
    assert_slots_accounted(engine)
    engine.flush_cache()
    assert engine.stats()["free_slots"] == engine.pool.capacity
    assert no_cache_engine.stats()["free_slots"] == no_cache_engine.pool.capacity


def test_memory_pressure_small_pool_gives_same_outputs(engine) -> None:
    prompts = [f"Story {i}: " + SHARED[: 60 + 7 * (i % 9)] + f" Item {i}." for i in range(50)]
    lens = [len(engine.tokenizer.encode(p)) + 12 for p in prompts]
    small = Engine(max_tokens_in_cache=sum(lens) // 10, max_running=16)
    try:
        assert max(lens) <= small.pool.capacity
        with pytest.raises(ValueError, match="KV slots"):  # could never fit: a clear error
            small.generate("hello", max_new_tokens=small.pool.capacity)
        got = run_all(small, prompts, max_new_tokens=12, ignore_eos=True)
        st = small.stats()
        assert st["evicted_tokens"] > 0 or st["retracted"] > 0
        wait_idle(small)
        assert_slots_accounted(small)
        small.flush_cache()
        assert small.stats()["free_slots"] == small.pool.capacity
    finally:
        small.shutdown()
    assert got == run_all(engine, prompts, max_new_tokens=12, ignore_eos=True)


def test_chunked_prefill_matches(engine, no_cache_engine) -> None:
    prompt = SHARED * 5  # longer than the 48-token chunks of no_cache_engine
    assert len(engine.tokenizer.encode(prompt)) > 100
    assert run_all(engine, [prompt]) == run_all(no_cache_engine, [prompt])


def test_second_request_hits_prompt_and_generated_tokens(engine) -> None:
    first = engine.generate(SHARED + "Q: Name a planet.\nA:", max_new_tokens=8).result()
    prompt_ids = engine.tokenizer.encode(SHARED + "Q: Name a planet.\nA:")
    follow = prompt_ids + first.output_ids + engine.tokenizer.encode("\nQ: Another one?\nA:")
    second = engine.generate(follow, max_new_tokens=4).result()
    # everything but the last sampled token (which never went through a forward) is cached
    assert second.cached_tokens >= len(prompt_ids) + len(first.output_ids) - 1


def test_streaming_chunks_add_up(engine) -> None:
    handle = engine.generate("Write a list of fruits:", max_new_tokens=24)
    chunks = list(handle)
    result = handle.result()
    assert "".join(c.text for c in chunks) == result.text
    assert [t for c in chunks for t in c.ids] == result.output_ids
    assert len(chunks) > 1


def test_stop_string_truncates_text_and_ids_agree(engine) -> None:
    tok = engine.tokenizer
    res = engine.generate("The capital of France is", max_new_tokens=32, stop=["\n"]).result()
    assert res.finish_reason == "stop" and res.matched_stop == "\n"
    assert "\n" not in res.text
    assert tok.decode(res.text_ids) + res.text_tail == res.text


def test_eos_stop_and_length(engine) -> None:
    chat = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    res = engine.generate(chat, max_new_tokens=64).result()
    assert res.finish_reason == "stop" and res.matched_stop == engine.tokenizer.eos_token_id
    res = engine.generate(chat, max_new_tokens=3, min_new_tokens=3).result()
    assert res.finish_reason == "length" and res.completion_tokens == 3


def test_sampling_seed_is_reproducible(engine) -> None:
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, max_new_tokens=16, seed=7)
    a = engine.generate("Once upon a time", params).result().output_ids
    b = engine.generate("Once upon a time", params).result().output_ids
    c = engine.generate("Once upon a time", params, seed=8).result().output_ids
    assert a == b and a != c


def test_prompt_logprobs_match_reference(engine_fp32) -> None:
    """A comparison with transformers in fp32 (bf16 differs from it by ~0.1 in logprobs)."""
    from transformers import AutoModelForCausalLM

    from lmnb.runtime import loader

    engine = engine_fp32
    ids = engine.tokenizer.encode("The capital of France is Paris, and of Italy is Rome.")
    engine.generate(ids[:6], max_new_tokens=0).result()  # cache a prefix to be bypassed
    res = engine.generate(ids, max_new_tokens=0, logprob_start_len=4).result()
    hf = AutoModelForCausalLM.from_pretrained(loader.resolve(None).folder, dtype=torch.float32)
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([ids])).logits[0].float(), dim=-1)
    ref = [lp[p - 1, ids[p]].item() for p in range(4, len(ids))]
    assert res.prompt_logprobs == pytest.approx(ref, abs=2e-3)
    out = engine.generate(ids, max_new_tokens=3, return_logprobs=True).result()
    assert len(out.output_logprobs) == 3 and all(x <= 0 for x in out.output_logprobs)


def test_many_threads_submit_concurrently(engine) -> None:
    results: dict[int, list[int]] = {}

    def worker(i: int) -> None:
        results[i] = engine.generate(f"Number {i % 4} is", max_new_tokens=6).result().output_ids

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(results[i] == results[i % 4] for i in range(12))


def test_cancel_frees_slots_and_engine_keeps_serving(engine) -> None:
    handle = engine.generate("Count slowly:", max_new_tokens=2000, ignore_eos=True)
    next(iter(handle))  # it is running
    handle.cancel()
    assert handle.result(timeout=60).finish_reason == "abort"
    wait_idle(engine)
    assert_slots_accounted(engine)
    assert engine.stats()["protected_slots"] == 0
    assert engine.generate("The capital of France is", max_new_tokens=2).result().text


@pytest.mark.parametrize(
    "prompt, kwargs, message",
    [
        ("", {}, "prompt is empty"),
        ("word " * 9000, {}, "longer than the model's context"),
        ("hello", {"top_p": 0.0}, "top_p"),
        ("hello", {"temperature": -1}, "temperature"),
        ("hello", {"nonsense": 1}, "unknown sampling parameter"),
        ([10**6], {}, "out of the vocabulary"),
        # every parameter is checked for type and range at submit (issue 11): these used to
        # pass and then kill the engine loop, or run with a silently changed meaning
        ("hello", {"temperature": float("nan")}, "temperature must be finite"),
        ("hello", {"temperature": float("inf")}, "temperature must be finite"),
        ("hello", {"temperature": "1"}, "temperature must be a number"),
        ("hello", {"temperature": True}, "temperature must be a number"),
        ("hello", {"top_p": float("nan")}, "top_p"),
        ("hello", {"top_p": "0.5"}, "top_p must be a number"),
        ("hello", {"top_k": 2.5, "temperature": 1.0}, "top_k must be an int"),
        ("hello", {"top_k": -1}, "top_k must be >= 0"),
        ("hello", {"max_new_tokens": 2.5}, "max_new_tokens must be an int"),
        ("hello", {"max_new_tokens": True}, "max_new_tokens must be an int"),
        ("hello", {"min_new_tokens": 1.0}, "min_new_tokens must be an int"),
        ("hello", {"min_new_tokens": 5, "max_new_tokens": 2}, "min_new_tokens"),
        ("hello", {"seed": "x", "temperature": 1.0}, "seed must be an int"),
        ("hello", {"seed": -1}, "seed must be in"),
        ("hello", {"stop_token_ids": ["x"], "ignore_eos": True}, "stop_token_ids"),
        ("hello", {"stop_token_ids": [True], "min_new_tokens": 1}, "stop_token_ids"),
        ("hello", {"stop_token_ids": [-3]}, "stop_token_ids must be >= 0"),
        ("hello", {"stop_token_ids": [10**6]}, "stop_token_ids out of the vocabulary"),
        ("hello", {"stop": ""}, "stop strings must be non-empty"),
        ("hello", {"stop": [1]}, "stop must hold strings"),
        ("hello", {"stop": 5}, "stop must be a list"),
        ("hello", {"logprob_start_len": -5}, "logprob_start_len must be >= 0"),
        ("hello", {"logprob_start_len": 1.5}, "logprob_start_len must be an int"),
        ("hello", {"ignore_eos": 1}, "ignore_eos must be True or False"),
        ("hello", {"return_logprobs": "yes"}, "return_logprobs must be True or False"),
        ("hello", {"regex": 5}, "regex must be a string"),
        ("hello", {"choices": ["a", 2]}, "choices must hold strings"),
        ("hello", {"params": {"temperature": 1}}, "params must be a SamplingParams"),
        (b"hello", {}, "prompt must be a str or a list of token ids"),
        (["a", "b"], {}, "prompt must be .*item 0 is 'a'.*pass one str"),
        ([1.5, 2.5], {}, "prompt must be .*item 0 is 1.5"),
        ([True, 5], {}, "prompt must be .*item 0 is True"),
        (None, {}, "prompt must be a str or a list of token ids"),
    ],
)
def test_bad_input_names_the_problem(engine, prompt, kwargs, message) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        engine.generate(prompt, **kwargs)
    assert engine.generate("Hello", max_new_tokens=2).result().completion_tokens >= 1
    wait_idle(engine)
    assert_slots_accounted(engine)


def test_policies_switch_at_run_time(engine) -> None:
    prompts = shared_prefix_prompts()[:6]
    outs = []
    for policy in ("fcfs", "dfs-weight", "lpm"):
        engine.set_policy(policy)
        assert engine.stats()["policy"] == policy
        outs.append(run_all(engine, prompts, max_new_tokens=4))
    assert outs[0] == outs[1] == outs[2]
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        engine.set_policy("random")
    aging = engine.scheduler.aging_steps
    engine.set_policy("lpm", aging_steps=None)
    assert engine.scheduler.aging_steps is None
    engine.set_policy("lpm", aging_steps=aging)
    engine.set_policy("fcfs")  # aging kept
    assert engine.scheduler.aging_steps == aging
    with pytest.raises(ValueError, match="aging_steps"):
        engine.set_policy("lpm", aging_steps=-1)
    engine.set_policy("lpm")


def test_snapshot_and_events(engine) -> None:
    engine.generate(SHARED + "Q: test?\nA:", max_new_tokens=2).result()
    snap = engine.snapshot()
    assert snap["nodes"][0]["parent"] is None
    assert sum(n["num_tokens"] for n in snap["nodes"]) == (
        snap["evictable_slots"] + snap["protected_slots"])
    assert any(SHARED[:20] in n["text"] for n in snap["nodes"])
    kinds = {e["type"] for e in engine.events()}
    assert {"insert", "hit"} <= kinds
