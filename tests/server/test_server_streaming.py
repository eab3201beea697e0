"""The handle -> asyncio bridge without a model: chunks pushed from another thread all arrive,
in order, through `set_notify` + `drain`; a finished handle ends the updates; cancel reaches
the engine's callback."""

from __future__ import annotations

import asyncio
import threading

from lmnb.runtime import GenerateHandle, GenerateResult, StreamChunk
from lmnb.server.streaming import HandleWatcher


def result(text: str) -> GenerateResult:
    return GenerateResult(text=text, output_ids=[], finish_reason="stop", prompt_tokens=1,
                          cached_tokens=0, completion_tokens=0)


def produce(handle: GenerateHandle, n: int) -> None:
    for i in range(n):
        handle._push(StreamChunk(str(i), [i]))
    handle._finish(result("done"))


def test_watcher_sees_every_chunk_from_another_thread() -> None:
    async def follow() -> tuple[list[list[int]], list[bool]]:
        handles = [GenerateHandle(i, lambda rid: None) for i in range(3)]
        watcher = HandleWatcher(handles)
        threads = [threading.Thread(target=produce, args=(h, 500)) for h in handles]
        for t in threads:
            t.start()
        ids: list[list[int]] = [[], [], []]
        done = [False, False, False]
        async for updates in watcher.updates():
            for u in updates:
                assert not done[u.index]
                ids[u.index] += [t for c in u.chunks for t in c.ids]
                done[u.index] = u.done
        for t in threads:
            t.join()
        return ids, done

    ids, done = asyncio.run(follow())
    assert ids == [list(range(500))] * 3 and all(done)


def test_results_of_already_finished_handles_and_cancel() -> None:
    cancelled: list[int] = []

    async def run() -> list[GenerateResult]:
        h = GenerateHandle(7, cancelled.append)
        produce(h, 3)  # finished before anyone watches
        watcher = HandleWatcher([h])
        out = await watcher.results()
        live = GenerateHandle(8, cancelled.append)
        HandleWatcher([live]).cancel()
        return out

    assert [r.text for r in asyncio.run(run())] == ["done"]
    assert cancelled == [8]


def test_drain_leaves_the_end_for_an_iterator() -> None:
    h = GenerateHandle(1, lambda rid: None)
    produce(h, 2)
    assert [c.text for c in h.drain()] == ["0", "1"] and h.drain() == []
    assert list(h) == [] and h.result().text == "done"
