"""SGLang's native API over HTTP: /generate (single, batch, input_ids, streaming, logprobs,
constraints, prefill-only), cache reuse, and the info/health/flush routes."""

from __future__ import annotations

import json

import httpx
import jsonschema
import pytest

from lmnb.runtime import Engine, SamplingParams
from tests.server.helpers import sse_events

GREEDY = {"max_new_tokens": 8, "temperature": 0}


def gen(client: httpx.Client, **body: object) -> dict:
    r = client.post("/generate", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_greedy_answer_equals_the_engine_in_process(client: httpx.Client, settled: Engine) -> None:
    prompt = "The three primary colours are"
    out = gen(client, text=prompt, sampling_params=GREEDY)
    local = settled.generate(prompt, SamplingParams(max_new_tokens=8)).result()
    assert out["text"] == local.text and out["output_ids"] == local.output_ids
    meta = out["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 8}
    assert meta["prompt_tokens"] == local.prompt_tokens and meta["completion_tokens"] == 8
    assert isinstance(meta["id"], str) and meta["e2e_latency"] >= 0
    assert local.cached_tokens > 0  # the HTTP request cached the same prompt


def test_repeated_prompt_hits_the_cache(client: httpx.Client, settled: Engine) -> None:
    prompt = "A repeated prompt about the cache: tell me a fact about owls."
    first = gen(client, text=prompt, sampling_params={"max_new_tokens": 2})
    second = gen(client, text=prompt, sampling_params={"max_new_tokens": 2})
    n = first["meta_info"]["prompt_tokens"]
    assert first["meta_info"]["cached_tokens"] < n - 1
    assert second["meta_info"]["cached_tokens"] == n - 1  # all but the last, which computes


def test_batch_of_texts_answers_a_list_in_order(client: httpx.Client, settled: Engine) -> None:
    prompts = ["One plus one is", "The sky is"]
    out = gen(client, text=prompts, sampling_params=GREEDY, rid=["a", "b"])
    assert isinstance(out, list) and len(out) == 2
    assert [o["meta_info"]["id"] for o in out] == ["a", "b"]
    for prompt, o in zip(prompts, out):
        assert o["text"] == gen(client, text=prompt, sampling_params=GREEDY)["text"]


def test_input_ids_single_and_batch(client: httpx.Client, settled: Engine) -> None:
    ids = settled.tokenizer.encode("Water boils at")
    by_text = gen(client, text="Water boils at", sampling_params=GREEDY)
    by_ids = gen(client, input_ids=ids, sampling_params=GREEDY)
    assert by_ids["output_ids"] == by_text["output_ids"]
    batch = gen(client, input_ids=[ids, ids[:2]], sampling_params=[GREEDY, {"max_new_tokens": 1}])
    assert batch[0]["output_ids"] == by_text["output_ids"]
    assert batch[1]["meta_info"]["completion_tokens"] == 1


def test_stream_sends_cumulative_text_then_done(client: httpx.Client, settled: Engine) -> None:
    body = {"text": "Once upon a time", "sampling_params": GREEDY}
    whole = gen(client, **body)
    with client.stream("POST", "/generate", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(list(r.iter_lines()))
    assert events[-1] == "[DONE]"
    texts = [e["text"] for e in events[:-1]]
    assert len(texts) >= 2
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # cumulative
    assert events[-2]["text"] == whole["text"]
    assert events[-2]["meta_info"]["finish_reason"] == {"type": "length", "length": 8}
    assert all(e["meta_info"]["finish_reason"] is None for e in events[:-2])


def test_batch_stream_tags_events_with_the_prompt_index(client: httpx.Client,
                                                         settled: Engine) -> None:
    body = {"text": ["Red", "Blue"], "sampling_params": {"max_new_tokens": 3}, "stream": True}
    with client.stream("POST", "/generate", json=body) as r:
        events = sse_events(list(r.iter_lines()))
    finals = [e for e in events[:-1] if e["meta_info"]["finish_reason"] is not None]
    assert sorted(e["index"] for e in finals) == [0, 1]


def test_logprobs_are_sglang_triples(client: httpx.Client, settled: Engine) -> None:
    prompt = "The capital of France is"
    n = len(settled.tokenizer.encode(prompt))
    out = gen(client, text=prompt, sampling_params={"max_new_tokens": 3}, return_logprob=True,
              logprob_start_len=0, return_text_in_logprobs=True)
    meta = out["meta_info"]
    inp, outp = meta["input_token_logprobs"], meta["output_token_logprobs"]
    assert len(inp) == n and inp[0][0] is None  # the first position has no logprob
    assert all(lp < 0 for lp, _, _ in inp[1:])
    assert [t for _, t, _ in inp] == settled.tokenizer.encode(prompt)
    assert "".join(text for _, _, text in inp) == prompt
    assert [t for _, t, _ in outp] == out["output_ids"] and len(outp) == 3
    # from a later position, and without text: the same values
    later = gen(client, text=prompt, sampling_params={"max_new_tokens": 0},
                return_logprob=True, logprob_start_len=2)["meta_info"]["input_token_logprobs"]
    assert len(later) == n - 2 and later[0][0] is None and later[0][2] is None
    assert [lp for lp, _, _ in later[1:]] == pytest.approx([lp for lp, _, _ in inp[3:]],
                                                           abs=1e-4)


def test_default_logprob_start_is_the_last_prompt_token(client: httpx.Client,
                                                         settled: Engine) -> None:
    out = gen(client, text="Hello there", sampling_params={"max_new_tokens": 1},
              return_logprob=True)
    assert len(out["meta_info"]["input_token_logprobs"]) == 1


def test_frontend_select_flow(client: httpx.Client, settled: Engine) -> None:
    """What SGLang's RuntimeEndpoint.select sends: a prefill, then a batch scored with
    max_new_tokens 0 and the frontend's own sampling fields (top_k -1, n 1, ...)."""
    prefix = "Q: Is the sun hot? A:"
    pre = gen(client, text=prefix, sampling_params={"max_new_tokens": 0})
    assert pre["text"] == "" and pre["meta_info"]["finish_reason"]["type"] == "length"
    start = max(pre["meta_info"]["prompt_tokens"] - 2, 0)
    frontend = {"max_new_tokens": 0, "temperature": 0, "top_k": -1, "n": 1, "min_p": 0.0,
                "frequency_penalty": 0.0, "presence_penalty": 0.0, "stop": [],
                "stop_token_ids": None, "regex": None, "json_schema": None,
                "skip_special_tokens": True, "spaces_between_special_tokens": True}
    out = gen(client, text=[prefix + c for c in (" Yes", " No")], sampling_params=frontend,
              return_logprob=True, return_text_in_logprobs=True, logprob_start_len=start)
    for o in out:
        lps = o["meta_info"]["input_token_logprobs"]
        assert lps[0][0] is None and all(isinstance(x[0], float) for x in lps[1:])
        assert o["meta_info"]["cached_tokens"] > 0


def test_regex_constrained(client: httpx.Client, settled: Engine) -> None:
    out = gen(client, text="My phone number is ",
              sampling_params={"max_new_tokens": 16, "regex": r"\d{3}-\d{4}"})
    import re

    assert re.fullmatch(r"\d{3}-\d{4}", out["text"])
    assert out["meta_info"]["finish_reason"]["type"] == "stop"


def test_json_schema_constrained(client: httpx.Client, settled: Engine) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    out = gen(client, text="A person as JSON: ",
              sampling_params={"max_new_tokens": 48, "json_schema": json.dumps(schema)})
    jsonschema.validate(json.loads(out["text"]), schema)


def test_stop_string_is_matched_and_trimmed(client: httpx.Client, settled: Engine) -> None:
    base = gen(client, text="Count: 1, 2, 3,", sampling_params={"max_new_tokens": 8})["text"]
    stop = base.strip()[:2] if base.strip() else ","
    out = gen(client, text="Count: 1, 2, 3,",
              sampling_params={"max_new_tokens": 8, "stop": [stop]})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert stop not in out["text"]


def test_info_routes(client: httpx.Client, engine: Engine) -> None:
    info = client.get("/get_model_info").json()
    assert info["model_path"] == engine.model_path and info["is_generation"] is True
    assert info["model_name"] == engine.model_name and "im_start" in info["chat_template"]
    assert info["tokenizer_path"]
    server = client.get("/get_server_info").json()
    assert server["engine"] == engine.describe()
    assert server["stats"]["capacity"] == engine.stats()["capacity"]
    assert client.get("/health").status_code == 200
    assert client.get("/health_generate").status_code == 200


def test_flush_cache_get_and_post(client: httpx.Client, settled: Engine) -> None:
    gen(client, text="Something to flush away", sampling_params={"max_new_tokens": 1})
    r = client.post("/flush_cache")
    assert r.status_code == 200 and r.json()["freed_slots"] > 0
    assert client.get("/flush_cache").status_code == 200
    assert settled.stats()["evictable_slots"] == 0


def test_abort_request_by_rid(client: httpx.Client, settled: Engine) -> None:
    import threading

    body = {"text": "Write a long story.", "rid": "to-abort", "stream": True,
            "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}}
    events: list[object] = []

    def run() -> None:
        with httpx.stream("POST", client.base_url.join("/generate"), json=body,
                          timeout=120) as r:
            events.extend(sse_events(list(r.iter_lines())))

    t = threading.Thread(target=run)
    t.start()
    import time

    deadline = time.time() + 60
    while not client.post("/abort_request", json={"rid": "to-abort"}).json()["aborted"]:
        assert time.time() < deadline
        time.sleep(0.05)
    t.join(120)
    final = events[-2]
    assert final["meta_info"]["finish_reason"]["type"] == "abort"
    assert final["meta_info"]["completion_tokens"] < 400
