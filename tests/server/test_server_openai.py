"""The OpenAI-compatible routes through the real `openai` client: models, completions (text and
token-id prompts, batches, echo + logprobs scoring), chat, streaming with usage, cache reuse,
response_format and the extra constraint fields."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from lmnb.runtime import Engine, SamplingParams

CHAT = [{"role": "user", "content": "Name a fruit."}]


def test_models_lists_the_served_model(oai: openai.OpenAI, engine: Engine) -> None:
    models = oai.models.list().data
    assert [m.id for m in models] == [engine.model_name]


def test_completion_greedy_equals_the_engine(oai: openai.OpenAI, settled: Engine) -> None:
    prompt = "The largest planet is"
    out = oai.completions.create(model="m", prompt=prompt, max_tokens=6, temperature=0)
    local = settled.generate(prompt, SamplingParams(max_new_tokens=6)).result()
    assert out.object == "text_completion" and out.choices[0].text == local.text
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == local.prompt_tokens
    assert out.usage.completion_tokens == 6
    assert out.usage.total_tokens == local.prompt_tokens + 6


def test_completion_prompt_forms(oai: openai.OpenAI, settled: Engine) -> None:
    ids = settled.tokenizer.encode("Snow is")
    by_text = oai.completions.create(model="m", prompt="Snow is", max_tokens=4, temperature=0)
    by_ids = oai.completions.create(model="m", prompt=ids, max_tokens=4, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = oai.completions.create(model="m", prompt=["Snow is", "Grass is"], max_tokens=4,
                                   temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    assert batch.choices[0].text == by_text.choices[0].text


def test_echo_logprobs_score_the_prompt(oai: openai.OpenAI, client: httpx.Client,
                                        settled: Engine) -> None:
    """max_tokens 0 + echo + logprobs: the prompt's token logprobs (how the OpenAI backend's
    select scores choices), equal to the native API's input_token_logprobs."""
    prompt = "Paris is the capital of France"
    out = oai.completions.create(model="m", prompt=prompt, max_tokens=0, echo=True,
                                 logprobs=1, temperature=0)
    lp = out.choices[0].logprobs
    assert out.choices[0].text == prompt and out.usage.completion_tokens == 0
    assert "".join(lp.tokens) == prompt and lp.token_logprobs[0] is None
    native = client.post("/generate", json={
        "text": prompt, "sampling_params": {"max_new_tokens": 0}, "return_logprob": True,
        "logprob_start_len": 0}).json()["meta_info"]["input_token_logprobs"]
    assert lp.token_logprobs[1:] == pytest.approx([x[0] for x in native[1:]], abs=1e-4)
    assert lp.text_offset[0] == 0 and lp.top_logprobs[1] == {lp.tokens[1]: lp.token_logprobs[1]}


def test_completion_output_logprobs(oai: openai.OpenAI, settled: Engine) -> None:
    out = oai.completions.create(model="m", prompt="Dogs are", max_tokens=4, logprobs=1,
                                 temperature=0)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == 4 and all(x < 0 for x in lp.token_logprobs)
    assert "".join(lp.tokens) == out.choices[0].text


def test_chat_completion(oai: openai.OpenAI, settled: Engine) -> None:
    out = oai.chat.completions.create(model="m", messages=CHAT, max_tokens=12, temperature=0,
                                      logprobs=True)
    msg = out.choices[0].message
    assert out.object == "chat.completion" and msg.role == "assistant" and msg.content
    text = settled.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    local = settled.generate(text, SamplingParams(max_new_tokens=12)).result()
    assert msg.content == local.text
    tokens = out.choices[0].logprobs.content
    assert "".join(t.token for t in tokens) == msg.content and all(t.logprob <= 0 for t in tokens)


def test_chat_max_completion_tokens_and_stop(oai: openai.OpenAI, settled: Engine) -> None:
    out = oai.chat.completions.create(model="m", messages=CHAT, max_completion_tokens=3,
                                      temperature=0)
    assert out.usage.completion_tokens == 3 and out.choices[0].finish_reason == "length"
    full = oai.chat.completions.create(model="m", messages=CHAT, max_tokens=12, temperature=0)
    word = full.choices[0].message.content.split()[1]
    cut = oai.chat.completions.create(model="m", messages=CHAT, max_tokens=12, temperature=0,
                                      stop=[word])
    assert cut.choices[0].finish_reason == "stop" and word not in cut.choices[0].message.content


def test_repeated_chat_reports_cached_tokens(oai: openai.OpenAI, settled: Engine) -> None:
    messages = [{"role": "user", "content": "Describe caching in one sentence, please."}]
    oai.chat.completions.create(model="m", messages=messages, max_tokens=2)
    again = oai.chat.completions.create(model="m", messages=messages, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens == again.usage.prompt_tokens - 1


def test_chat_stream_with_usage(oai: openai.OpenAI, settled: Engine) -> None:
    whole = oai.chat.completions.create(model="m", messages=CHAT, max_tokens=10, temperature=0)
    chunks = list(oai.chat.completions.create(model="m", messages=CHAT, max_tokens=10,
                                              temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == whole.choices[0].finish_reason and set(finals[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream(oai: openai.OpenAI, settled: Engine) -> None:
    whole = oai.completions.create(model="m", prompt="Roses are red,", max_tokens=8,
                                   temperature=0)
    chunks = list(oai.completions.create(model="m", prompt="Roses are red,", max_tokens=8,
                                         temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_seeded_sampling_repeats(oai: openai.OpenAI, settled: Engine) -> None:
    def sample() -> str:
        out = oai.completions.create(model="m", prompt="A random word:", max_tokens=6,
                                     temperature=1.0, seed=1234)
        return out.choices[0].text

    assert sample() == sample()


SCHEMA = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16},
                                           "population": {"type": "integer"}},
          "required": ["city", "population"], "additionalProperties": False}


def test_response_format_json_schema(oai: openai.OpenAI, settled: Engine) -> None:
    out = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "A city as JSON."}], max_tokens=48,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "city", "schema": SCHEMA}},
        temperature=0)  # sampled, an integer may run past max_tokens: greedy is one answer
    jsonschema.validate(json.loads(out.choices[0].message.content), SCHEMA)


def test_response_format_json_object(oai: openai.OpenAI, settled: Engine) -> None:
    out = oai.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Any JSON object."}], max_tokens=40,
        response_format={"type": "json_object"}, temperature=0)
    if out.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(out.choices[0].message.content), dict)
    else:
        assert out.choices[0].message.content.startswith("{")


def test_extra_constraint_fields(oai: openai.OpenAI, settled: Engine) -> None:
    out = oai.completions.create(model="m", prompt="The year is ", max_tokens=8,
                                 extra_body={"regex": r"(19|20)\d\d"})
    assert re.fullmatch(r"(19|20)\d\d", out.choices[0].text)
    for field in ("choices", "guided_choice"):
        out = oai.chat.completions.create(model="m", messages=CHAT, max_tokens=8,
                                          extra_body={field: ["apple", "pear"]})
        assert out.choices[0].message.content in ("apple", "pear")
    out = oai.completions.create(model="m", prompt="Yes or no? ", max_tokens=8,
                                 extra_body={"guided_regex": "(yes|no)"})
    assert out.choices[0].text in ("yes", "no")
