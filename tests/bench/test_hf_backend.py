"""`HFRuntime` honours the engine's parameters: the same greedy tokens, stops, prompt logprobs
and constrained output as the engine on the default model, and counts what it computed.

Two implementations agree token for token only in float32: both are pinned to it
(`engine_fp32`, `HFRuntime(dtype="float32")`), whatever `LMNB_DTYPE` says."""

from __future__ import annotations

import re

import pytest

from benchmarks.hf_backend import HFRuntime
from lmnb.runtime import SamplingParams

PROMPT = "The capital of France is Paris. The capital of Italy is"


@pytest.fixture(scope="module")
def hf(hf_fp32: HFRuntime) -> HFRuntime:
    return hf_fp32  # HFRuntime(dtype="float32"), shared with test_model.py


def both(engine, hf: HFRuntime, params: SamplingParams, prompt: str = PROMPT):
    ids = engine.tokenizer.encode(prompt)
    return engine.generate(ids, params).result(), hf.generate(ids, params).result()


def test_greedy_tokens_match_the_engine(engine_fp32, hf: HFRuntime) -> None:
    ours, theirs = both(engine_fp32, hf, SamplingParams(max_new_tokens=12))
    assert theirs.output_ids == ours.output_ids and theirs.text == ours.text
    assert theirs.finish_reason == ours.finish_reason
    assert theirs.cached_tokens == 0


def test_stop_string_and_min_tokens(engine_fp32, hf: HFRuntime) -> None:
    ours, theirs = both(engine_fp32, hf, SamplingParams(max_new_tokens=24, stop=(".",)))
    assert theirs.text == ours.text and "." not in theirs.text
    assert theirs.matched_stop == "."
    forced = SamplingParams(max_new_tokens=6, min_new_tokens=6, ignore_eos=True)
    assert hf.generate([1, 2, 3], forced).result().completion_tokens == 6


def test_prompt_logprobs_match_the_engine(engine_fp32, hf: HFRuntime) -> None:
    start = len(engine_fp32.tokenizer.encode(PROMPT)) - 3
    params = SamplingParams(max_new_tokens=0, logprob_start_len=start)
    ours, theirs = both(engine_fp32, hf, params)
    assert len(theirs.prompt_logprobs) == len(ours.prompt_logprobs) == 3
    assert theirs.prompt_logprobs == pytest.approx(ours.prompt_logprobs, abs=1e-3)
    assert theirs.completion_tokens == 0


def test_regex_is_enforced(engine_fp32, hf: HFRuntime) -> None:
    params = SamplingParams(max_new_tokens=16, regex=r"[0-9]{3}-[0-9]{4}")
    ours, theirs = both(engine_fp32, hf, params, "A phone number: ")
    assert re.fullmatch(r"[0-9]{3}-[0-9]{4}", theirs.text)
    assert theirs.text == ours.text


def test_stats_count_requests(hf: HFRuntime) -> None:
    before = hf.stats()
    hf.generate([5, 6, 7, 8], SamplingParams(max_new_tokens=2, min_new_tokens=2))
    after = hf.stats()
    assert after["prompt_tokens"] - before["prompt_tokens"] == 4
    assert after["generated_tokens"] - before["generated_tokens"] == 2
    assert after["cached_tokens"] == 0 and after["hit_rate"] == 0.0


def test_a_fault_fails_its_request_alone(hf: HFRuntime, monkeypatch) -> None:
    """As in the engine: an error while handling one request's token (here injected where a
    rejected grammar token would raise) fails that request's handle, and the next one runs."""
    real = hf.outputs.append_token
    calls = []

    def once(req, tok, lp):
        calls.append(tok)
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        return real(req, tok, lp)

    monkeypatch.setattr(hf.outputs, "append_token", once)
    handle = hf.generate(PROMPT, SamplingParams(max_new_tokens=4))
    with pytest.raises(RuntimeError, match="injected fault"):
        handle.result()
    assert hf.generate(PROMPT, SamplingParams(max_new_tokens=4)).result().completion_tokens == 4
