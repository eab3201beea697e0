"""OpenAI completion and chat request bodies read into engine submissions.

Owns OpenAI's wire names and defaults (`max_tokens` 16 for completions and the rest of the
context for chat, `temperature` 1, `n` 1 only), the prompt forms (`prompt` as a string, token
ids, or a list of either; chat `messages` through the tokenizer's chat template), the
constraint fields (`response_format` json_schema/json_object, and the extra fields `regex`,
`choices`, `json_schema` and vLLM's `guided_regex`/`guided_choice`/`guided_json`), and
`logprobs`/`echo`. Fields OpenAI has but lmnb does not implement are accepted at their
neutral value and refused otherwise. Knows nothing of HTTP or the response's shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lmnb.runtime import Engine
from lmnb.server.errors import BadRequest
from lmnb.server.fields import (
    ANY,
    get_bool,
    get_dict,
    get_int,
    get_int_list,
    get_number,
    get_stop,
    is_id_list,
    refuse_unknown,
)
from lmnb.server.streaming import Submission

COMMON = {"model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
          "stop", "seed", "response_format", "regex", "choices", "json_schema", "guided_regex",
          "guided_choice", "guided_json", "top_k", "min_tokens", "ignore_eos", "stop_token_ids",
          "user", "logprobs"}
COMPLETIONS = COMMON | {"prompt", "echo"}
CHAT = COMMON | {"messages", "max_completion_tokens", "top_logprobs", "add_generation_prompt",
                 "continue_final_message"}
NEUTRAL = {"frequency_penalty": 0, "presence_penalty": 0, "repetition_penalty": 1,
           "min_p": 0, "best_of": 1, "logit_bias": None, "suffix": None, "tools": None,
           "tool_choice": "none", "parallel_tool_calls": ANY, "skip_special_tokens": ANY,
           "spaces_between_special_tokens": ANY, "metadata": ANY, "store": ANY,
           "service_tier": ANY, "reasoning_effort": ANY, "modalities": ANY}
RUNTIME_TO_WIRE = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens",
                   "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "stop": "stop", "stop_token_ids": "stop_token_ids", "ignore_eos": "ignore_eos",
                   "seed": "seed", "regex": "regex", "choices": "choices",
                   "json_schema": "response_format", "return_logprobs": "logprobs",
                   "logprob_start_len": "echo"}


@dataclass
class OpenAIRequest:
    prompts: list[list[int]]
    params: list[dict[str, Any]]  # SamplingParams fields per prompt
    stream: bool
    include_usage: bool
    logprobs: int | None  # None: no logprobs; else how many alternatives were asked for
    echo_texts: list[str] = field(default_factory=list)  # completions with echo only
    wire_names: dict[str, str] = field(default_factory=lambda: dict(RUNTIME_TO_WIRE))
    prompt_field: str = "prompt"

    def submissions(self) -> list[Submission]:
        return [Submission(ids, p, self.wire_names, self.prompt_field)
                for ids, p in zip(self.prompts, self.params)]


def parse_completion(body: dict[str, Any], engine: Engine) -> OpenAIRequest:
    refuse_unknown(body, COMPLETIONS, NEUTRAL)
    prompts, texts = _completion_prompts(body.get("prompt"), engine)
    logprobs = get_int(body, "logprobs")
    echo = get_bool(body, "echo")
    params = _common(body)
    params["max_new_tokens"] = get_int(body, "max_tokens", 16)
    if logprobs is not None:
        _check_logprobs(logprobs, 0, body)
        params["return_logprobs"] = True
        if echo:
            params["logprob_start_len"] = 1  # every prompt token but the first has one
    req = OpenAIRequest(prompts, [dict(params) for _ in prompts], *_streaming(body), logprobs)
    req.echo_texts = texts if echo else []
    return req


def parse_chat(body: dict[str, Any], engine: Engine) -> OpenAIRequest:
    refuse_unknown(body, CHAT, NEUTRAL)
    ids = engine.tokenizer.encode(_chat_text(body, engine))
    params = _common(body)
    wire = dict(RUNTIME_TO_WIRE)
    limit = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    wire["max_new_tokens"] = limit
    room = min(engine.max_context, engine.pool.capacity) - len(ids)
    params["max_new_tokens"] = get_int(body, limit, max(room, 1))
    logprobs = None
    if get_bool(body, "logprobs"):
        logprobs = get_int(body, "top_logprobs", 0)
        _check_logprobs(logprobs, 0, body)
        params["return_logprobs"] = True
    req = OpenAIRequest([ids], [params], *_streaming(body), logprobs, wire_names=wire,
                        prompt_field="messages")
    return req


def _check_logprobs(n: int, lo: int, body: dict[str, Any]) -> None:
    name = "top_logprobs" if "top_logprobs" in body else "logprobs"
    if not lo <= n <= 20:
        raise BadRequest(f"{name} must be in [0, 20], got {n}", name)
    if get_bool(body, "stream"):
        raise BadRequest("logprobs are not supported with stream=true", "logprobs")


def _streaming(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = get_bool(body, "stream")
    options = get_dict(body, "stream_options")
    return stream, stream and get_bool(options, "include_usage")


def _common(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling fields both endpoints share, as SamplingParams fields."""
    n = get_int(body, "n", 1)
    if n != 1:
        raise BadRequest(f"n must be 1 (lmnb returns one choice per prompt), got {n}", "n")
    params: dict[str, Any] = {
        "temperature": get_number(body, "temperature", 1.0),
        "top_p": get_number(body, "top_p", 1.0),
        "top_k": get_int(body, "top_k", 0),
        "min_new_tokens": get_int(body, "min_tokens", 0),
        "stop": get_stop(body),
        "stop_token_ids": get_int_list(body, "stop_token_ids"),
        "ignore_eos": get_bool(body, "ignore_eos"),
        "seed": get_int(body, "seed"),
    }
    if params["top_k"] == -1:  # vLLM's and SGLang's "no top-k cut"
        params["top_k"] = 0
    params.update(_constraint(body))
    return params


def _constraint(body: dict[str, Any]) -> dict[str, Any]:
    """regex / json_schema / choices from response_format and the extra fields (the runtime
    refuses more than one)."""
    found: dict[str, Any] = {}
    for name, key in (("regex", "regex"), ("guided_regex", "regex"), ("choices", "choices"),
                      ("guided_choice", "choices"), ("json_schema", "json_schema"),
                      ("guided_json", "json_schema")):
        if body.get(name) is not None:
            if key in found:
                raise BadRequest(f"give {key} once (got {name} too)", name)
            found[key] = body[name]
    schema = _response_format(get_dict(body, "response_format"))
    if schema is not None:
        if "json_schema" in found:
            raise BadRequest("give response_format or json_schema, not both", "response_format")
        found["json_schema"] = schema
    return found


def _response_format(fmt: dict[str, Any]) -> str | None:
    kind = fmt.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, (dict, bool)):
            raise BadRequest("response_format.json_schema.schema must be a JSON schema object",
                             "response_format")
        return json.dumps(schema)
    raise BadRequest(f"response_format.type must be text, json_object or json_schema, got "
                     f"{kind!r}", "response_format")


def _completion_prompts(prompt: Any, engine: Engine) -> tuple[list[list[int]], list[str]]:
    """(token ids, text) of each prompt: a string, token ids, or a list of either."""
    if isinstance(prompt, str):
        return [engine.tokenizer.encode(prompt)], [prompt]
    if is_id_list(prompt):
        return [list(prompt)], [engine.tokenizer.decode(prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return [engine.tokenizer.encode(p) for p in prompt], list(prompt)
        if all(is_id_list(p) for p in prompt):
            return [list(p) for p in prompt], [engine.tokenizer.decode(p) for p in prompt]
    raise BadRequest("prompt must be a string, a list of token ids (integers), or a non-empty "
                     "list of either", "prompt")


def _chat_text(body: dict[str, Any], engine: Engine) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of {role, content} objects",
                         "messages")
    cont = get_bool(body, "continue_final_message")
    add = get_bool(body, "add_generation_prompt", not cont)
    try:
        return engine.tokenizer.apply_chat_template(
            [_message(m, i) for i, m in enumerate(messages)], add_generation_prompt=add,
            continue_final_message=cont)
    except BadRequest:
        raise
    except Exception as exc:  # the template's own checks (roles, order)
        raise BadRequest(f"messages do not fit the chat template: {exc}", "messages") from None


def _message(message: Any, i: int) -> dict[str, str]:
    where = f"messages[{i}]"
    if not isinstance(message, dict) or not isinstance(message.get("role"), str):
        raise BadRequest(f"{where} must be an object with a string role", "messages")
    content = message.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):  # content parts: text only
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or \
                    not isinstance(part.get("text"), str):
                raise BadRequest(f"{where}.content: only text parts are supported", "messages")
            parts.append(part["text"])
        content = "".join(parts)
    elif not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string or a list of text parts",
                         "messages")
    return {"role": message["role"], "content": content}
