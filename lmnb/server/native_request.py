"""SGLang's `GenerateReqInput` read into engine submissions: prompts, sampling parameters, logprobs.

Owns the native request's wire names and defaults as SGLang's server reads them: `text` or
`input_ids` (one prompt, or a list = a batch), `sampling_params` (one object or one per
prompt; SGLang's `top_k=-1` means no cut), `return_logprob` with `logprob_start_len` (-1 or
absent: the last prompt token), `return_text_in_logprobs`, `rid`, `stream`. Fields SGLang has
but lmnb does not implement are accepted at their neutral value and refused otherwise. Knows
nothing of HTTP or of the response's shape.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from lmnb.runtime import Engine
from lmnb.server.errors import BadRequest
from lmnb.server.fields import ANY, get_bool, is_id_list, refuse_unknown
from lmnb.server.streaming import Submission

TOP_LEVEL = {"text", "input_ids", "sampling_params", "stream", "return_logprob",
             "logprob_start_len", "return_text_in_logprobs", "rid"}
TOP_LEVEL_NEUTRAL = {"top_logprobs_num": 0, "token_ids_logprob": None, "image_data": None,
                     "lora_path": None, "return_hidden_states": False, "session_params": None,
                     "custom_logit_processor": None, "modalities": None, "log_metrics": ANY,
                     "stream_output": ANY, "no_logs": ANY, "data_parallel_rank": ANY}
SAMPLING = {"max_new_tokens", "min_new_tokens", "temperature", "top_p", "top_k", "stop",
            "stop_token_ids", "ignore_eos", "regex", "json_schema", "choices", "seed",
            "sampling_seed"}
SAMPLING_NEUTRAL = {"n": 1, "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                    "repetition_penalty": 1.0, "no_stop_trim": False, "stop_regex": None,
                    "ebnf": None, "structural_tag": None, "logit_bias": None,
                    "custom_params": None, "skip_special_tokens": ANY,
                    "spaces_between_special_tokens": ANY, "stream_interval": ANY}
WIRE_NAMES = {name: name for name in SAMPLING - {"sampling_seed"}} | {
    "return_logprobs": "return_logprob", "logprob_start_len": "logprob_start_len"}


@dataclass
class NativeItem:
    """One prompt of a native request and what its answer must carry."""

    rid: str
    ids: list[int]
    params: dict[str, Any]
    return_logprob: bool
    logprob_start_len: int  # SGLang's: input_token_logprobs start at this prompt position
    text_in_logprobs: bool

    def submission(self) -> Submission:
        return Submission(self.ids, self.params, WIRE_NAMES, "text")


@dataclass
class NativeRequest:
    items: list[NativeItem]
    batch: bool  # the client sent a list: the answer is a list
    stream: bool


def parse_generate(body: dict[str, Any], engine: Engine) -> NativeRequest:
    """Read a /generate body (tokenising text prompts with the engine's tokenizer)."""
    refuse_unknown(body, TOP_LEVEL, TOP_LEVEL_NEUTRAL)
    prompts, batch = _prompts(body, engine)
    n = len(prompts)
    sampling = _per_item(body.get("sampling_params"), n, "sampling_params", dict, {})
    want = _per_item(body.get("return_logprob"), n, "return_logprob", bool, False)
    starts = _per_item(body.get("logprob_start_len"), n, "logprob_start_len", int, -1)
    rids = _per_item(body.get("rid"), n, "rid", str, None)
    with_text = get_bool(body, "return_text_in_logprobs")
    items = []
    for i, ids in enumerate(prompts):
        params = sampling_params(sampling[i], f"sampling_params{f'[{i}]' if batch else ''}.")
        start = _logprob_start(starts[i], len(ids)) if want[i] else len(ids) - 1
        if want[i]:
            params["return_logprobs"] = True
            if start + 1 < len(ids):  # the engine's start: the first real value SGLang sends
                params["logprob_start_len"] = start + 1
        items.append(NativeItem(rids[i] or uuid.uuid4().hex, ids, params, want[i], start,
                                with_text))
    return NativeRequest(items, batch, get_bool(body, "stream"))


def _prompts(body: dict[str, Any], engine: Engine) -> tuple[list[list[int]], bool]:
    text, input_ids = body.get("text"), body.get("input_ids")
    if (text is None) == (input_ids is None):
        raise BadRequest("give exactly one of text and input_ids", "text")
    if text is not None:
        if isinstance(text, str):
            return [engine.tokenizer.encode(text)], False
        if isinstance(text, list) and text and all(isinstance(t, str) for t in text):
            return [engine.tokenizer.encode(t) for t in text], True
        raise BadRequest("text must be a string or a non-empty list of strings", "text")
    if is_id_list(input_ids):
        return [list(input_ids)], False
    if isinstance(input_ids, list) and input_ids and all(is_id_list(p) for p in input_ids):
        return [list(p) for p in input_ids], True
    raise BadRequest("input_ids must be a non-empty list of token ids (integers) or a list of "
                     "such lists", "input_ids")


def _per_item(value: Any, n: int, name: str, kind: type, default: Any) -> list[Any]:
    """A field given once for every prompt or as a list with one value per prompt."""
    if value is None:
        return [default] * n
    if isinstance(value, list) and kind is not list:
        if len(value) != n:
            raise BadRequest(f"{name} has {len(value)} entries for {n} prompts", name)
        values = [default if v is None else v for v in value]
    else:
        values = [value] * n
    for v in values:
        bad = not isinstance(v, kind) or (kind is int and isinstance(v, bool))
        if v is not default and bad:
            raise BadRequest(f"{name} must be {_KIND_WORDS[kind]}, got {v!r}", name)
    return values


_KIND_WORDS = {dict: "an object (or one per prompt)", bool: "true or false",
               int: "an integer", str: "a string"}


def _logprob_start(start: int, prompt_len: int) -> int:
    if start < 0:
        return prompt_len - 1  # SGLang's default: only the last prompt token
    if start >= prompt_len:
        raise BadRequest(f"logprob_start_len ({start}) must be less than the prompt's length "
                         f"({prompt_len} tokens)", "logprob_start_len")
    return start


def sampling_params(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """SGLang's sampling_params as SamplingParams fields (None means the default)."""
    refuse_unknown(raw, SAMPLING, SAMPLING_NEUTRAL, where)
    params = {k: v for k, v in raw.items() if k in SAMPLING and v is not None}
    if "sampling_seed" in params:
        params["seed"] = params.pop("sampling_seed")
    if params.get("top_k") == -1:  # SGLang's "no top-k cut"
        params["top_k"] = 0
    return params
