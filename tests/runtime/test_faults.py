"""Faults stay with the request that caused them (issue 11).

A failed forward, a request whose logits cannot be handled, memory pressure, shutdown and
interpreter exit: each ends the requests it concerns with an error (or finishes them
correctly), leaves the cache and the slot accounting as they should be, and the engine keeps
serving the rest. Faults are injected by monkeypatching one engine's methods.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

from lmnb.runtime import Engine, outputs
from tests.conftest import assert_slots_accounted, wait_idle

PROMPT = "The three primary colours of light are red, green and"


@pytest.fixture(scope="module")
def small() -> Engine:
    """A separate engine whose model and methods the tests patch."""
    eng = Engine(max_tokens_in_cache=1024)
    yield eng
    eng.shutdown()


def tree(eng: Engine) -> list[tuple[int, ...]]:
    """The radix tree's content: every node's token ids (locks and hit counts aside)."""
    with eng._lock:
        return sorted(tuple(n.key) for n in eng.cache._nodes())


def fail_forward(eng: Engine, monkeypatch, after: int = 0) -> dict:
    """Make the model forward raise once, on its (after+1)-th call from now; records the
    tree as it was when the failing step began."""
    forward = eng.model.forward
    seen = {"calls": 0, "tree": None}

    def flaky(batch, *args, **kwargs):
        seen["calls"] += 1
        if seen["calls"] == after + 1:
            seen["tree"] = sorted(tuple(n.key) for n in eng.cache._nodes())  # loop thread
            raise RuntimeError("injected forward fault")
        return forward(batch, *args, **kwargs)

    monkeypatch.setattr(eng.model, "forward", flaky)
    return seen


# ---- 1. a failed forward leaves the cache as before the step --------------------------------


def test_failed_extend_inserts_nothing_and_leaks_nothing(small, monkeypatch) -> None:
    small.flush_cache()
    want = small.generate(PROMPT, max_new_tokens=8).result(timeout=60).output_ids
    small.flush_cache()
    wait_idle(small)
    before, free, seq = tree(small), small.stats()["free_slots"], small.cache.snapshot()
    fail_forward(small, monkeypatch)
    with pytest.raises(RuntimeError, match="model forward failed"):
        small.generate(PROMPT, max_new_tokens=8).result(timeout=60)
    monkeypatch.undo()
    wait_idle(small)
    assert_slots_accounted(small)
    assert tree(small) == before
    assert small.stats()["free_slots"] == free  # the step's uncomputed slots came back
    assert not [e for e in small.events(seq["last_event"]) if e["type"] == "insert"]
    again = small.generate(PROMPT, max_new_tokens=8).result(timeout=60)
    assert again.cached_tokens == 0  # as before the fault: nothing of it was cached
    assert again.output_ids == want


def test_failed_decode_step_leaves_the_tree_as_it_was(small, monkeypatch) -> None:
    prompt = PROMPT + " blue. The three primary colours of paint are"
    n = len(small.tokenizer.encode(prompt))
    small.flush_cache()
    small.generate(prompt, max_new_tokens=0).result(timeout=60)
    want = small.generate(prompt, max_new_tokens=10, ignore_eos=True).result(timeout=60)
    assert want.cached_tokens == n - 1
    small.flush_cache()
    wait_idle(small)
    seen = fail_forward(small, monkeypatch, after=4)  # the prefill, three decodes, then fault
    with pytest.raises(RuntimeError, match="model forward failed"):
        small.generate(prompt, max_new_tokens=10, ignore_eos=True).result(timeout=60)
    monkeypatch.undo()
    wait_idle(small)
    assert_slots_accounted(small)
    assert tree(small) == seen["tree"]  # the failed step's requests inserted nothing
    assert small.stats()["protected_slots"] == 0
    again = small.generate(prompt, max_new_tokens=10, ignore_eos=True).result(timeout=60)
    assert again.cached_tokens == n - 1  # the prompt, inserted by its (good) extend step
    assert again.output_ids == want.output_ids


# ---- 2. one request's bad logits handling fails it alone -------------------------------------


def _boom(req) -> bool:
    return bool(req.params.extra.get("boom"))


def submit_together(eng: Engine, prompts: list[str], last: dict, **kw) -> list:
    with eng._lock:  # the loop takes them in one go: they share the batch
        return [eng.generate(p, **kw) for p in prompts] + [eng.generate(PROMPT, **last, **kw)]


@pytest.mark.parametrize("where", ["sample", "banned", "append", "prompt_logprobs", "deliver"])
def test_a_failing_request_fails_alone(small, monkeypatch, where) -> None:
    prompts = [f"Fact {i}: the sun is" for i in range(4)]
    kw = {"max_new_tokens": 6, "ignore_eos": True, "logprob_start_len": 2}
    small.flush_cache()
    want = [h.result(timeout=60) for h in submit_together(small, prompts, {}, **kw)]
    small.flush_cache()
    proc = small.outputs
    calls = {"boom": 0, "batched": 0}

    def hit(reqs) -> bool:
        if any(_boom(r) for r in reqs):
            calls["boom"] += 1
            calls["batched"] += len(reqs) > 1
            return calls["boom"] >= 3 or where in ("prompt_logprobs", "deliver")
        return False

    if where == "sample":
        real_sample = outputs.sample

        def sample(logits, params, gens, banned=None, **kw):
            if hit([type("R", (), {"params": p}) for p in params]):
                raise RuntimeError("injected fault")
            return real_sample(logits, params, gens, banned, **kw)

        monkeypatch.setattr(outputs, "sample", sample)
    else:
        name = {"banned": "bans", "append": "append_token",
                "prompt_logprobs": "_prompt_logprobs", "deliver": "deliver"}[where]
        real = getattr(proc, name)

        def patched(req, *args):
            if hit([req]):
                raise RuntimeError("injected fault")
            return real(req, *args)

        monkeypatch.setattr(proc, name, patched)
    *handles, bad = submit_together(small, prompts, {"extra": {"boom": True}}, **kw)
    with pytest.raises(RuntimeError, match="injected fault"):
        bad.result(timeout=60)
    got = [h.result(timeout=60) for h in handles]
    monkeypatch.undo()
    assert [g.output_ids for g in got] == [w.output_ids for w in want[:4]]
    for g, w in zip(got, want):
        assert g.prompt_logprobs == pytest.approx(w.prompt_logprobs, abs=2e-3)
    if where == "sample":
        assert calls["batched"] > 0  # the fault came while others were in the same batch
    wait_idle(small)
    assert_slots_accounted(small)
    assert small.stats()["protected_slots"] == 0
    # what the failed request left in the cache was computed: its prompt comes out right
    again = small.generate(PROMPT, **kw).result(timeout=60)
    assert again.output_ids == want[4].output_ids
    assert again.prompt_logprobs == pytest.approx(want[4].prompt_logprobs, abs=2e-2)


def test_a_dead_loop_fails_every_request_and_refuses_new_ones(monkeypatch) -> None:
    eng = Engine(max_tokens_in_cache=512)
    try:
        running = eng.generate("Count:", max_new_tokens=400, ignore_eos=True)
        next(iter(running))

        def broken() -> None:
            raise KeyError("injected scheduler bug")

        with eng._lock:
            queued = [eng.generate(PROMPT, max_new_tokens=4) for _ in range(3)]
            monkeypatch.setattr(eng.scheduler, "next_step", broken)
        for h in [running, *queued]:
            with pytest.raises(RuntimeError, match="engine loop failed.*injected scheduler"):
                h.result(timeout=30)
        eng._thread.join(timeout=30)
        assert not eng._thread.is_alive()
        with pytest.raises(RuntimeError, match="no more requests"):
            eng.generate(PROMPT, max_new_tokens=4)
    finally:
        eng.shutdown()


# ---- 3. prompt logprobs survive memory pressure ------------------------------------------


def test_prompt_logprobs_complete_under_memory_pressure(engine) -> None:
    base = ("The quick brown fox jumps over the lazy dog while the farmer watches from the "
            "hill. Then")
    prompts = [engine.tokenizer.encode(base + f" option {i} is {'very ' * (i % 5)}likely.")
               for i in range(40)]
    starts = [len(p) - 6 - (i % 3) * 8 for i, p in enumerate(prompts)]
    want = [engine.generate(p, max_new_tokens=0, logprob_start_len=s).result(timeout=60)
            for p, s in zip(prompts, starts)]
    eng = Engine(max_tokens_in_cache=200)
    try:
        handles = [eng.generate(p, max_new_tokens=0, logprob_start_len=s)
                   for p, s in zip(prompts, starts)]
        busy = [eng.generate(p, max_new_tokens=24, ignore_eos=True) for p in prompts[:6]]
        got = [h.result(timeout=120) for h in handles]
        for h in busy:
            h.result(timeout=120)
        assert eng.stats()["evicted_tokens"] > 0  # there was pressure
        wait_idle(eng)
        assert_slots_accounted(eng)
    finally:
        eng.shutdown()
    for p, s, g, w in zip(prompts, starts, got, want):
        assert len(g.prompt_logprobs) == len(p) - s == len(w.prompt_logprobs)
        assert g.prompt_logprobs == pytest.approx(w.prompt_logprobs, abs=2e-3)


# ---- 4. shutdown ends every handle ----------------------------------------------------------


def test_shutdown_fails_the_inbox_too(monkeypatch) -> None:
    eng = Engine(max_tokens_in_cache=512)
    entered, gate = threading.Event(), threading.Event()
    forward = eng.model.forward

    def slow(*args, **kwargs):
        entered.set()
        gate.wait(30)
        return forward(*args, **kwargs)

    monkeypatch.setattr(eng.model, "forward", slow)
    first = eng.generate(PROMPT, max_new_tokens=50)
    assert entered.wait(30)  # the loop waits inside its forward: the inbox fills up
    queued = [eng.generate(PROMPT + f" {i}", max_new_tokens=4) for i in range(5)]
    assert eng._inbox.qsize() == 5
    stopper = threading.Thread(target=eng.shutdown)
    stopper.start()
    time.sleep(0.1)
    gate.set()
    for h in [first, *queued]:
        with pytest.raises(RuntimeError, match="shut down"):
            h.result(timeout=30)
    stopper.join(timeout=30)
    assert not stopper.is_alive()
    with pytest.raises(RuntimeError, match="shut down"):
        eng.generate(PROMPT)


def test_submit_racing_shutdown_never_hangs() -> None:
    eng = Engine(max_tokens_in_cache=512)
    handles = []

    def submit() -> None:
        for i in range(10_000):
            try:
                handles.append(eng.generate(f"Item {i % 7}:", max_new_tokens=3))
            except RuntimeError:
                return

    worker = threading.Thread(target=submit)
    worker.start()
    time.sleep(0.3)
    eng.shutdown()
    worker.join(timeout=30)
    assert not worker.is_alive() and handles
    for h in handles:
        try:
            h.result(timeout=30)
        except RuntimeError as exc:
            assert "shut down" in str(exc)
        assert h.done()


# ---- 5. a process that exits while generating exits with its own status ----------------------

EXITING = textwrap.dedent("""
    import sys
    from lmnb.runtime import Engine
    # the default (native kernels where they load) and the torch paths, inside a C++ op at exit
    eng = Engine(max_tokens_in_cache=2048, deterministic=None if sys.argv[2] == "1" else False)
    handle = eng.generate("Count to a thousand:", max_new_tokens=1500, ignore_eos=True)
    next(iter(handle))  # it is generating
    if sys.argv[1] == "exit":
        sys.exit(3)
    raise KeyError("uncaught")
""")


def test_process_exit_while_generating_keeps_its_status(tmp_path) -> None:
    script = tmp_path / "exiting.py"
    script.write_text(EXITING)
    procs = {how: subprocess.Popen([sys.executable, str(script), how, native],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for how, native in (("exit", "1"), ("raise", "0"))}
    out = {how: p.communicate(timeout=180) for how, p in procs.items()}
    for how, rc in (("exit", 3), ("raise", 1)):
        _, err = out[how]
        assert procs[how].returncode == rc, err[-2000:]
        assert "terminate called" not in err
    assert "KeyError: 'uncaught'" in out["raise"][1]
