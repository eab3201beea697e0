"""The OpenAI-compatible routes: `/v1/models`, `/v1/completions`, `/v1/chat/completions`.

Owns the answers' shapes as the `openai` client parses them: completion and chat objects,
SSE chunks (`text_completion` / `chat.completion.chunk`, a final usage chunk with
`stream_options.include_usage`, then `[DONE]`), `usage` with `prompt_tokens_details.
cached_tokens`, and logprobs (the legacy completions object, prompt tokens included with
`echo`, the first one null as vLLM does; chat's `content` list). Only the chosen token's
logprob is computed: `top_logprobs` holds that token alone. Reading requests lives in
`openai_request.py`. Knows nothing of SGLang's native API.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from lmnb.runtime import Engine, GenerateResult
from lmnb.server.errors import openai_body
from lmnb.server.fields import read_json
from lmnb.server.openai_request import OpenAIRequest, parse_chat, parse_completion
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
STARTED = int(time.time())


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    engine: Engine = request.app.state.engine
    card = {"id": engine.model_name, "object": "model", "created": STARTED, "owned_by": "lmnb",
            "root": engine.model_name, "max_model_len": engine.max_context}
    return JSONResponse({"object": "list", "data": [card]})


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    return await _serve(request, parse_completion, Completion)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    return await _serve(request, parse_chat, ChatCompletion)


async def _serve(request: Request, parse: Any, kind: type[Completion]) -> Response:
    engine: Engine = request.app.state.engine
    body = await read_json(request)
    req: OpenAIRequest = await run_in_threadpool(parse, body, engine)
    handles = await submit(engine, req.submissions())
    watcher = HandleWatcher(handles)
    shape = kind(req, engine)
    if req.stream:
        events = error_events(shape.events(watcher), lambda m: openai_body(m, "server_error"))
        return SSEResponse(events, watcher.cancel)
    try:
        results = await watcher.results(request)
    except ClientGone:
        return Response(status_code=499)
    return JSONResponse(shape.answer(results))


def usage(results: list[GenerateResult]) -> dict[str, Any]:
    prompt = sum(r.prompt_tokens for r in results)
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in results)}}


def finish_reason(res: GenerateResult) -> str:
    return res.finish_reason  # "stop" | "length" | "abort" (a cancelled request)


def shown_ids(res: GenerateResult) -> list[int]:
    """The output tokens the text shows: a stop string cuts inside or after a token."""
    return res.output_ids[: len(res.text_ids) + (1 if res.text_tail else 0)]


class Completion:
    """The /v1/completions answer and stream for one request."""

    object = "text_completion"
    chunk_object = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, req: OpenAIRequest, engine: Engine) -> None:
        self.req, self.engine = req, engine
        self.id = f"{self.id_prefix}{uuid.uuid4().hex}"
        self.created = int(time.time())

    def header(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created,
                "model": self.engine.model_name}

    def answer(self, results: list[GenerateResult]) -> dict[str, Any]:
        choices = [self.choice(i, res) for i, res in enumerate(results)]
        return {**self.header(self.object), "choices": choices, "usage": usage(results),
                "system_fingerprint": None}

    def choice(self, i: int, res: GenerateResult) -> dict[str, Any]:
        echo = self.req.echo_texts[i] if self.req.echo_texts else ""
        logprobs = self.logprobs(i, res) if self.req.logprobs is not None else None
        return {"index": i, "text": echo + res.text, "logprobs": logprobs,
                "finish_reason": finish_reason(res)}

    def logprobs(self, i: int, res: GenerateResult) -> dict[str, Any]:
        """The legacy logprobs object; with echo the prompt's tokens come first."""
        ids, lps = [], []
        if self.req.echo_texts:
            ids += self.req.prompts[i]
            lps += [None, *(res.prompt_logprobs or [])]
        out = shown_ids(res)
        ids += out
        lps += (res.output_logprobs or [])[: len(out)]
        tokens = [self.engine.tokenizer.decode([t]) for t in ids]
        # offsets into the prompt + completion text (the prompt's length first without echo)
        at = 0 if self.req.echo_texts else len(self.engine.tokenizer.decode(self.req.prompts[i]))
        offsets = []
        for tok in tokens:
            offsets.append(at)
            at += len(tok)
        top = [None if lp is None else {tok: lp} for tok, lp in zip(tokens, lps)]
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": top,
                "text_offset": offsets}

    # ---- streaming -------------------------------------------------------------------------

    async def events(self, watcher: HandleWatcher) -> AsyncIterator[str]:
        for i, echo in enumerate(self.req.echo_texts):
            yield sse(self.chunk(i, echo, None))
        for i in range(len(self.req.prompts)):
            first = self.first_chunk(i)
            if first is not None:
                yield sse(first)
        results: dict[int, GenerateResult] = {}
        async for updates in watcher.updates():
            for u in updates:
                text = "".join(c.text for c in u.chunks)
                reason = None
                if u.done:
                    results[u.index] = result_of(watcher.handles[u.index])
                    reason = finish_reason(results[u.index])
                if text or reason:
                    yield sse(self.chunk(u.index, text, reason))
        if self.req.include_usage:
            ordered = [results[i] for i in sorted(results)]
            yield sse({**self.header(self.chunk_object), "choices": [],
                       "usage": usage(ordered)})

    def first_chunk(self, i: int) -> dict[str, Any] | None:
        return None

    def chunk(self, i: int, text: str, reason: str | None) -> dict[str, Any]:
        out = {**self.header(self.chunk_object),
               "choices": [{"index": i, "text": text, "logprobs": None,
                            "finish_reason": reason}]}
        if self.req.include_usage:
            out["usage"] = None
        return out


class ChatCompletion(Completion):
    """The /v1/chat/completions answer and stream."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def choice(self, i: int, res: GenerateResult) -> dict[str, Any]:
        logprobs = self.logprobs(i, res) if self.req.logprobs is not None else None
        return {"index": i, "message": {"role": "assistant", "content": res.text},
                "logprobs": logprobs, "finish_reason": finish_reason(res)}

    def logprobs(self, i: int, res: GenerateResult) -> dict[str, Any]:
        out = shown_ids(res)
        content = []
        for t, lp in zip(out, res.output_logprobs or []):
            tok = self.engine.tokenizer.decode([t])
            entry = {"token": tok, "logprob": lp, "bytes": list(tok.encode())}
            top = [dict(entry)] if self.req.logprobs else []
            content.append({**entry, "top_logprobs": top})
        return {"content": content, "refusal": None}

    def first_chunk(self, i: int) -> dict[str, Any] | None:
        return self._chunk(i, {"role": "assistant", "content": ""}, None)

    def chunk(self, i: int, text: str, reason: str | None) -> dict[str, Any]:
        return self._chunk(i, {"content": text} if text else {}, reason)

    def _chunk(self, i: int, delta: dict[str, Any], reason: str | None) -> dict[str, Any]:
        out = {**self.header(self.chunk_object),
               "choices": [{"index": i, "delta": delta, "logprobs": None,
                            "finish_reason": reason}]}
        if self.req.include_usage:
            out["usage"] = None
        return out
