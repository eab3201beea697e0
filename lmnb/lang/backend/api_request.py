"""The OpenAI API's side of the `OpenAI` backend: a `SamplingParams` as request fields, a
speculative chat answer read into a `SpecOutput`, and the errors about continuing a partial
assistant message, in the program's words.

Plain functions of their arguments; knows nothing of the client, handles or states.
"""

from __future__ import annotations

import json
import os
from typing import Any

from lmnb.lang.backend.api_call import result_from, server_message
from lmnb.lang.backend.api_spec import SpecOutput

# The extra body that makes a server continue the last (assistant) message instead of
# answering it (vLLM's and SGLang's names).
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}



def sampling_fields(model: str, params: Any, chat: bool) -> dict[str, Any]:
    """A `SamplingParams` as the API's fields; what OpenAI's API lacks goes in `extra_body`
    (the names vLLM and SGLang read), sent only when set."""
    request: dict[str, Any] = {"model": model, "max_tokens": params.max_new_tokens,
                               "temperature": params.temperature}
    if params.stop:
        request["stop"] = list(params.stop)
    if params.top_p != 1.0:
        request["top_p"] = params.top_p
    if params.seed is not None:
        request["seed"] = params.seed
    extra: dict[str, Any] = dict(params.extra)
    for name, field, neutral in (("top_k", "top_k", 0), ("min_tokens", "min_new_tokens", 0),
                                 ("ignore_eos", "ignore_eos", False),
                                 ("regex", "regex", None)):
        if getattr(params, field) != neutral:
            extra[name] = getattr(params, field)
    if params.stop_token_ids:
        extra["stop_token_ids"] = list(params.stop_token_ids)
    if params.choices is not None:
        extra["choices"] = list(params.choices)
    if params.json_schema is not None:
        fmt = json_schema_format(params.json_schema)
        if chat:
            request["response_format"] = fmt
        else:
            extra["response_format"] = fmt
    if extra:
        request["extra_body"] = extra
    return request


def speculable(params: Any) -> bool:
    """Whether a gen's value can be cut from a speculative output by text alone."""
    return (not params.constrained and params.min_new_tokens == 0 and not params.stop_token_ids
            and not params.ignore_eos)


def sampling_key(params: Any) -> tuple:
    return (params.temperature, params.top_p, params.top_k, params.seed)


def spec_output(response: Any, continued: str, sampling: tuple) -> SpecOutput:
    """A speculative chat response as the turn's text from its start, with token ends where
    the server sent token logprobs whose text spells the output."""
    choice = response.choices[0]
    text = choice.message.content or ""
    ends = token_ends(getattr(choice, "logprobs", None), text)
    shifted = tuple(len(continued) + e for e in ends) if ends is not None else None
    return SpecOutput(continued + text, len(continued), shifted, choice.finish_reason != "length",
                      result_from("", None, response.usage).prompt_tokens, sampling)


def token_ends(logprobs: Any, text: str) -> list[int] | None:
    """Character offsets where each token of `text` ends, from chat logprobs' token bytes
    (None when they are missing or do not spell `text`)."""
    content = getattr(logprobs, "content", None)
    if not content:
        return None
    raw, ends = b"", []
    for item in content:
        piece = bytes(item.bytes) if getattr(item, "bytes", None) else item.token.encode()
        raw += piece
        ends.append(len(raw.decode("utf-8", errors="ignore")))
    return ends if raw.decode("utf-8", errors="replace") == text else None


def refuses_continue(exc: Any) -> bool:
    """Whether a 400 refuses the fields that continue a partial message (by naming one)."""
    message = server_message(exc)
    return any(name in message for name in ("continue_final_message", *CONTINUE))


def cannot_continue(role_text: str, where: str, detail: str = "", missed: str | None = None,
                    wrote: str | None = None) -> str:
    """Why a call cannot be made after text inside an assistant turn, in the program's words."""
    said = f" (the server said: {detail})" if detail else ""
    head = (f"this gen follows text inside the assistant turn ({role_text[-60:]!r}); a chat "
            f"API writes whole assistant messages, and {where} does not continue a partial "
            f"one (continue_final_message){said}.")
    if missed is None:
        return (head + " Put the gen right after sgl.assistant(...), or let one call fill the "
                "turn: @function(num_api_spec_tokens=N).")
    how = ""
    if wrote is not None:
        same = len(os.path.commonprefix([wrote, role_text]))
        how = f": the model wrote {wrote[same:same + 40]!r}"
        if same < len(role_text):
            how += f" where the program has {role_text[same:same + 40]!r}"
    return (head + f" API speculation missed here ({missed}{how}), so this gen has no call of "
            "its own to fall back on; make the turn's constant text match what the model "
            "writes (say it in the user's message), or use a server that continues messages.")


def json_schema_format(schema: str) -> dict[str, Any]:
    """A JSON schema (text) as the API's `response_format`."""
    return {"type": "json_schema", "json_schema": {"name": "output", "schema": json.loads(schema)}}
