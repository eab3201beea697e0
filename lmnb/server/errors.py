"""What a failed HTTP request answers: the exceptions routes raise and the JSON bodies they become.

Owns `BadRequest` (a 400 naming the field), `EngineFailure` (a 500: the engine failed a request
after accepting it), turning the runtime's TypeError/ValueError messages into wire field names,
and the two error shapes: OpenAI's `{"error": {"message", "type", "param", "code"}}` under
`/v1`, SGLang's `{"error": {"message"}}` elsewhere. Knows nothing of routes or the engine.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from starlette.responses import JSONResponse


class BadRequest(ValueError):
    """The request is malformed or asks for something impossible: a 400 naming `param`."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class EngineFailure(RuntimeError):
    """The engine accepted the request, then failed it: a 500 for this request alone."""


# How the runtime's messages spell a field, for fields whose wire name differs or that the
# runtime names in words (a GrammarError says "JSON schema").
_SPELLINGS = {"json_schema": ("json_schema", "JSON schema"), "prompt": ("prompt", "token ids")}


def from_runtime(exc: Exception, wire_names: Mapping[str, str], prompt_field: str) -> BadRequest:
    """A runtime validation error (TypeError/ValueError from `Engine.generate` or
    `SamplingParams`) as a BadRequest in the request's own field names.

    wire_names: runtime field -> the name the client sent it under (max_new_tokens ->
    max_tokens); prompt_field: what the client called the prompt (text, prompt, messages).
    """
    message = str(exc)
    for runtime, wire in wire_names.items():
        if runtime != wire:
            message = re.sub(rf"\b{runtime}\b", wire, message)
    return BadRequest(message, _param_in(message, {**wire_names, "prompt": prompt_field}))


def _param_in(message: str, names: Mapping[str, str]) -> str | None:
    """The wire name of the first field the message mentions (by position in the text)."""
    found: list[tuple[int, str]] = []
    for runtime, wire in names.items():
        for spelling in {wire, *_SPELLINGS.get(runtime, ())}:
            match = re.search(rf"(?<![\w-]){re.escape(spelling)}(?![\w-])", message)
            if match:
                found.append((match.start(), wire))
    return min(found)[1] if found else None


def openai_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
                code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def native_body(message: str) -> dict:
    return {"error": {"message": message}}


def error_response(path: str, status: int, message: str, param: str | None = None,
                   code: str | None = None) -> JSONResponse:
    """The error body for `path`: OpenAI's shape under /v1, SGLang's elsewhere."""
    if path.startswith("/v1/") or path == "/v1":
        kind = {400: "invalid_request_error", 401: "invalid_request_error",
                404: "not_found_error"}.get(status, "server_error")
        return JSONResponse(openai_body(message, kind, param, code or status), status)
    return JSONResponse(native_body(message), status)
