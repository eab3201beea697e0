"""The language on `RuntimeEndpoint` against a real `lmnb serve` (127.0.0.1, a random port) in
front of the session's engine: the same programs give the same tokens as in-process, the cache
is hit across calls, select/regex/JSON/streaming/batches/cancel work, errors read clearly, and
text mode (no local tokenizer) runs too. Generations are kept short (~40 tok/s here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import lmnb as lm
from lmnb.lang.backend.base import Prompt
from lmnb.lang.backend.remote_model import JinjaChat
from lmnb.lang.chat import ChatTemplate
from lmnb.lang.control import Cancelled
from lmnb.runtime.handle import GenerateResult, StreamChunk
from lmnb.runtime.params import SamplingParams
from lmnb.server.serve import start_server
from tests.conftest import assert_slots_accounted, wait_idle


@pytest.fixture(scope="module")
def server(engine):
    srv = start_server(engine)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def ep(server) -> lm.RuntimeEndpoint:
    endpoint = lm.RuntimeEndpoint(server.url)
    yield endpoint
    endpoint.close()


@pytest.fixture(scope="module")
def local(engine) -> lm.Runtime:
    return lm.Runtime(engine=engine)


@pytest.fixture(scope="module")
def text_ep(server) -> lm.RuntimeEndpoint:
    endpoint = lm.RuntimeEndpoint(server.url, tokenizer=False, chat_template_name="chatml")
    yield endpoint
    endpoint.close()


@lm.function
def qa(s, question):
    s += lm.system("You are a helpful assistant.")
    s += lm.user(question)
    s += lm.assistant(lm.gen("answer", max_tokens=10))


@lm.function
def capital(s):
    s += lm.user("What is the capital of France?")
    s += lm.assistant_begin()
    s += "The capital of France is " + lm.select("city", ["Paris", "London", "Berlin"])
    s += lm.assistant_end()


def test_connect_finds_the_model_and_its_tokenizer(ep, local) -> None:
    assert ep.get_model_name() == local.engine.model_path  # SGLang: the model path
    assert ep.tokenizer is not None and "token ids" in ep.tokenizer_reason
    assert ep.chat_template == local.chat_template
    assert "stats" in ep.get_server_info()


def test_gen_gives_the_in_process_tokens(ep, local) -> None:
    here = qa.run(question="Name a fruit.", temperature=0, backend=local)
    there = qa.run(question="Name a fruit.", temperature=0, backend=ep)
    assert there["answer"] == here["answer"] and there["answer"]
    assert there.token_ids() == here.token_ids()
    meta = there.get_meta_info("answer")
    assert meta["finish_reason"]["type"] in ("stop", "length")
    assert meta["completion_tokens"] == here.get_meta_info("answer")["completion_tokens"]


def test_handles_stream_chunks_and_give_runtime_results(ep, engine) -> None:
    ids = ep.tokenizer.encode("Once upon a time")
    here = engine.generate(ids, SamplingParams(max_new_tokens=8, stop=["e"])).result()
    handle = ep.generate(Prompt(ids, ""), SamplingParams(max_new_tokens=8, stop=["e"]))
    chunks = list(handle)
    there = handle.result()
    assert isinstance(there, GenerateResult) and all(isinstance(c, StreamChunk) for c in chunks)
    assert "".join(c.text for c in chunks) == there.text
    for field in ("text", "output_ids", "text_ids", "text_tail", "finish_reason",
                  "matched_stop", "completion_tokens"):
        assert getattr(there, field) == getattr(here, field), field


def test_a_second_turn_hits_the_cache(ep) -> None:
    @lm.function
    def chat(s):
        s += lm.user("Say one word.")
        s += lm.assistant(lm.gen("first", max_tokens=4))
        s += lm.user("Another one.")
        s += lm.assistant(lm.gen("second", max_tokens=4))

    st = chat.run(temperature=0, backend=ep)
    assert st["first"] and st["second"]
    second = st.get_meta_info("second")
    assert second["cached_tokens"] > 0
    assert second["cached_tokens"] >= len(ep.tokenizer.encode(st["first"]))
    assert [m["role"] for m in st.messages()] == ["user", "assistant"] * 2


def test_fork_join(ep) -> None:
    @lm.function
    def tips(s):
        s += lm.user("Give a tip for sleeping well.")
        s += lm.assistant_begin()
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"Tip {i + 1}:" + lm.gen("tip", max_tokens=5)
        forks.join()
        s += lm.assistant_end()

    st = tips.run(temperature=0, backend=ep)
    assert isinstance(st["tip"], list) and len(st["tip"]) == 2 and all(st["tip"])
    assert st.get_meta_info("tip")  # the children's meta info joins too


def test_select_picks_as_in_process(ep, local) -> None:
    here = capital.run(backend=local)
    there = capital.run(backend=ep)
    assert there["city"] == here["city"] == "Paris"
    got, want = there.get_meta_info("city"), here.get_meta_info("city")
    assert got["scores"] == pytest.approx(want["scores"], abs=1e-3)
    assert got["input_token_ids"] == want["input_token_ids"]


def test_regex_and_json_schema(ep) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}},
              "required": ["age"], "additionalProperties": False}

    @lm.function
    def structured(s):
        s += lm.user("How old is a teenager? Answer with a number, then as JSON.")
        s += lm.assistant_begin()
        s += "Number: " + lm.gen("n", regex=r"[0-9]{2}", max_tokens=4) + "\nJSON: "
        s += lm.gen("js", json_schema=json.dumps(schema), max_tokens=16)
        s += lm.assistant_end()

    st = structured.run(temperature=0, backend=ep)
    assert len(st["n"]) == 2 and st["n"].isdigit()
    assert isinstance(json.loads(st["js"])["age"], int)


def test_streaming_with_text_iter(ep) -> None:
    st = qa.run(question="Count to five.", temperature=0, stream=True, backend=ep)
    pieces = list(st.text_iter("answer"))
    assert len(pieces) > 1  # streamed chunk by chunk, not once at the end
    assert "".join(pieces) == st["answer"]


def test_run_batch(ep, local) -> None:
    items = [{"question": q} for q in ("Name a colour.", "Name an animal.", "Name a city.")]
    there = qa.run_batch(items, temperature=0, backend=ep)
    here = qa.run_batch(items, temperature=0, backend=local)
    assert [s["answer"] for s in there] == [s["answer"] for s in here]


def test_cancel_mid_gen_gives_the_slots_back(ep, engine) -> None:
    @lm.function
    def long(s):
        s += lm.user("Write a long story about a dragon.")
        s += lm.assistant(lm.gen("story", max_tokens=300, ignore_eos=True))

    st = long.run(temperature=0, stream=True, backend=ep)
    for _ in st.text_iter("story"):
        break  # the request is running on the server now
    assert st.cancel() >= 1
    with pytest.raises(lm.ProgramError) as err:
        st.sync()
    assert isinstance(err.value.__cause__, Cancelled) or "cancelled" in str(err.value)
    wait_idle(engine)
    assert_slots_accounted(engine)


def test_a_bad_request_is_a_clear_program_error(ep) -> None:
    @lm.function
    def bad(s):
        s += "Digits: " + lm.gen("x", regex="[0-9", max_tokens=3)

    with pytest.raises(lm.ProgramError) as err:
        bad.run(backend=ep).sync()
    assert isinstance(err.value.__cause__, ValueError)
    assert "regex" in str(err.value.__cause__)


def test_no_server_is_a_connection_error() -> None:
    with pytest.raises(ConnectionError, match="cannot reach"):
        lm.RuntimeEndpoint("http://127.0.0.1:9", timeout=5)


def test_a_jinja_template_from_the_server_reads_as_the_tokenizer_does(local) -> None:
    hf = local.tokenizer.hf
    assert ChatTemplate.from_tokenizer(JinjaChat(hf.chat_template)) == local.chat_template


def test_api_key(engine) -> None:
    srv = start_server(engine, api_key="sesame")
    try:
        with pytest.raises(PermissionError, match="api_key"):
            lm.RuntimeEndpoint(srv.url)
        with pytest.raises(PermissionError, match="not accepted"):
            lm.RuntimeEndpoint(srv.url, api_key="wrong")
        keyed = lm.RuntimeEndpoint(srv.url, api_key="sesame")
        st = qa.run(question="Hi!", max_tokens=2, temperature=0, backend=keyed)
        assert st.get_meta_info("answer")["completion_tokens"] >= 1
    finally:
        srv.stop()


def test_text_mode_gen_and_select(text_ep, local) -> None:
    assert text_ep.tokenizer is None and "text mode" in text_ep.tokenizer_reason
    st = qa.run(question="Name a fruit.", temperature=0, backend=text_ep)
    assert st["answer"] and st.token_ids() == []
    assert "<|im_start|>assistant\n" in st.text()

    @lm.function
    def plain(s):  # no roles: the text (and its tokens) is the same in both modes
        s += "The capital of France is" + lm.select("city", [" Paris", " London", " Berlin"])

    there, here = plain.run(backend=text_ep), plain.run(backend=local)
    assert there["city"] == here["city"] == " Paris"
    assert there.get_meta_info("city")["scores"] == pytest.approx(
        here.get_meta_info("city")["scores"], abs=1e-3)


def test_text_mode_reads_the_servers_template(server, local) -> None:
    endpoint = lm.RuntimeEndpoint(server.url, tokenizer=False)
    assert endpoint.chat_template == local.chat_template  # SmolLM2's, default system head too
    assert endpoint.chat_template_source == "the server's"
    endpoint.close()


def test_text_mode_without_a_template_says_chatml(server, monkeypatch) -> None:
    endpoint = lm.RuntimeEndpoint(server.url, tokenizer=False)
    monkeypatch.setattr(endpoint, "_server_template", lambda: None)  # a server that has none
    with pytest.warns(UserWarning, match="ChatML"):
        assert endpoint.chat_template.prefix("user") == "<|im_start|>user\n"
    endpoint.close()


def test_views_data_over_http(ep, engine) -> None:
    snap = ep.snapshot()
    assert snap["nodes"] and {"id", "parent", "text", "num_tokens"} <= set(snap["nodes"][0])
    assert ep.stats()["capacity"] == engine.stats()["capacity"]
    assert isinstance(ep.events(snap["last_event"]), list)
    assert ep.idle() in (True, False)
    with pytest.raises(NotImplementedError, match="no such route"):
        ep.http.get("/no_such_route")  # what an SGLang server answers for /snapshot
    assert ep.flush_cache() is True


def test_text_mode_loads_no_torch(server) -> None:
    code = (
        "import sys, warnings\n"
        "import lmnb as sgl\n"
        "assert 'torch' not in sys.modules\n"
        f"ep = sgl.RuntimeEndpoint({server.url!r}, tokenizer=False, chat_template_name='chatml')\n"
        "@sgl.function\n"
        "def f(s):\n"
        "    s += sgl.user('Hi') + sgl.assistant(sgl.gen('a', max_tokens=2))\n"
        "st = f.run(backend=ep, temperature=0)\n"
        "assert st['a'], st.text()\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
