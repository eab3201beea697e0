"""SGLang's native HTTP API, wire-compatible with an SGLang server, in front of one engine.

Owns the routes `/generate` (one prompt or a batch, JSON or an SSE stream of cumulative text),
`/flush_cache`, `/get_model_info`, `/get_server_info`, `/health`, `/health_generate` and
`/abort_request`, and the answer's shape: `{"text", "output_ids", "meta_info"}` with SGLang's
`finish_reason` objects and `[logprob, token_id, text-or-null]` triples. Reading the request
lives in `native_request.py`. Knows nothing of the OpenAI API.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmnb.runtime import Engine, GenerateResult, SamplingParams
from lmnb.server.errors import native_body
from lmnb.server.fields import get_str, read_json
from lmnb.server.native_request import NativeItem, NativeRequest, parse_generate
from lmnb.server.streaming import (
    ClientGone,
    HandleWatcher,
    SSEResponse,
    error_events,
    result_of,
    sse,
    submit,
)

router = APIRouter()
HEALTH_TIMEOUT_S = 60.0


def engine_of(request: Request) -> Engine:
    return request.app.state.engine


@router.post("/generate")
async def generate(request: Request) -> Response:
    engine = engine_of(request)
    started = time.perf_counter()
    body = await read_json(request)
    req = await run_in_threadpool(parse_generate, body, engine)
    handles = await submit(engine, [item.submission() for item in req.items])
    watcher = HandleWatcher(handles)
    live = request.app.state.live
    for item, handle in zip(req.items, handles):
        live[item.rid] = handle

    def forget() -> None:
        for item in req.items:
            live.pop(item.rid, None)

    if req.stream:
        events = error_events(_stream(req, watcher, engine, started), native_body)
        return SSEResponse(events, lambda: (watcher.cancel(), forget()))
    try:
        results = await watcher.results(request)
    except ClientGone:
        return Response(status_code=499)
    finally:
        forget()
    answers = [answer(item, res, engine, started) for item, res in zip(req.items, results)]
    return JSONResponse(answers if req.batch else answers[0])


async def _stream(req: NativeRequest, watcher: HandleWatcher, engine: Engine,
                  started: float) -> Any:
    """SSE events with the text so far (cumulative, as SGLang sends it); each prompt's last
    event carries the full answer. A batch's events say which prompt they belong to."""
    texts = ["" for _ in req.items]
    ids: list[list[int]] = [[] for _ in req.items]
    async for updates in watcher.updates():
        for u in updates:
            item = req.items[u.index]
            if u.done:
                event = answer(item, result_of(watcher.handles[u.index]), engine, started)
            else:
                texts[u.index] += "".join(c.text for c in u.chunks)
                ids[u.index] += [t for c in u.chunks for t in c.ids]
                event = {"text": texts[u.index], "output_ids": list(ids[u.index]),
                         "meta_info": {"id": item.rid, "finish_reason": None,
                                       "prompt_tokens": len(item.ids),
                                       "completion_tokens": len(ids[u.index])}}
            if req.batch:
                event["index"] = u.index
            yield sse(event)


def answer(item: NativeItem, res: GenerateResult, engine: Engine, started: float) -> dict:
    """SGLang's answer for one prompt."""
    meta: dict[str, Any] = {
        "id": item.rid,
        "finish_reason": finish_reason(res),
        "prompt_tokens": res.prompt_tokens,
        "completion_tokens": res.completion_tokens,
        "cached_tokens": res.cached_tokens,
        "e2e_latency": time.perf_counter() - started,
    }
    if item.return_logprob:
        meta.update(logprob_triples(item, res, engine))
    return {"text": res.text, "output_ids": res.output_ids, "meta_info": meta}


def finish_reason(res: GenerateResult) -> dict[str, Any]:
    match res.finish_reason:
        case "stop":
            return {"type": "stop", "matched": res.matched_stop}
        case "length":
            return {"type": "length", "length": res.completion_tokens}
    return {"type": "abort", "message": "the request was cancelled"}


def logprob_triples(item: NativeItem, res: GenerateResult, engine: Engine) -> dict[str, list]:
    """SGLang's input/output token logprobs: [logprob, token_id, text or None] from
    logprob_start_len on; the first prompt position has no logprob (null), as in SGLang."""
    prompt_ids = item.ids[item.logprob_start_len:]
    prompt_lps = [None, *(res.prompt_logprobs or [])]
    out_ids = res.output_ids
    out_lps = res.output_logprobs or []

    def text(t: int) -> str | None:
        return engine.tokenizer.decode([t]) if item.text_in_logprobs else None

    return {
        "input_token_logprobs": [[lp, t, text(t)] for lp, t in zip(prompt_lps, prompt_ids)],
        "output_token_logprobs": [[lp, t, text(t)] for lp, t in zip(out_lps, out_ids)],
    }


@router.api_route("/flush_cache", methods=["GET", "POST"])
async def flush_cache(request: Request) -> JSONResponse:
    freed = await run_in_threadpool(engine_of(request).flush_cache)
    return JSONResponse({"message": "Cache flushed.", "freed_slots": freed})


@router.get("/get_model_info")
async def get_model_info(request: Request) -> JSONResponse:
    engine = engine_of(request)
    # the folder on the server's machine (a client there loads the same tokenizer from it),
    # and the chat template, for clients elsewhere
    template = getattr(engine.tokenizer.hf, "chat_template", None)
    return JSONResponse({"model_path": engine.model_path, "tokenizer_path": engine.model_path,
                         "model_name": engine.model_name, "is_generation": True,
                         "max_context": engine.max_context, "chat_template": template})


@router.get("/get_server_info")
async def get_server_info(request: Request) -> JSONResponse:
    engine = engine_of(request)
    stats = await run_in_threadpool(engine.stats)
    return JSONResponse({
        "model_path": engine.model_name,
        "served_model_name": engine.model_name,
        "context_length": engine.max_context,
        "max_total_num_tokens": stats["capacity"],
        "schedule_policy": stats["policy"],
        "engine": engine.describe(),
        "stats": stats,
    })


@router.get("/health")
async def health() -> Response:
    return Response(status_code=200)


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    """200 once the engine has generated one token for a one-token prompt."""
    engine = engine_of(request)
    handle = await run_in_threadpool(engine.generate, [engine.tokenizer.eos_token_id],
                                     SamplingParams(max_new_tokens=1))
    try:
        await asyncio.wait_for(HandleWatcher([handle]).results(request), HEALTH_TIMEOUT_S)
    except (asyncio.TimeoutError, ClientGone):
        handle.cancel()
        return JSONResponse(native_body("the engine did not answer in time"), 503)
    return Response(status_code=200)


@router.post("/abort_request")
async def abort_request(request: Request) -> JSONResponse:
    """Cancel a running /generate request by its rid (a no-op for unknown or finished ones)."""
    rid = get_str(await read_json(request), "rid")
    handle = request.app.state.live.get(rid) if rid else None
    if handle is not None:
        handle.cancel()
    return JSONResponse({"aborted": handle is not None})
