"""SGLang's native `/generate` protocol as data: what a request body holds and what an answer
becomes.

Owns the mapping from the runtime's `SamplingParams` to SGLang's `sampling_params` and
top-level fields (`top_k=0` is SGLang's -1, `seed` its `sampling_seed`, `choices` a regex,
prompt logprobs from position S asked as `logprob_start_len = S - 1`, whose first entry
SGLang leaves null), and from an answer (`text`, `output_ids`, `meta_info` with
`finish_reason {type, matched}` and `[logprob, id, text]` triples) to the runtime's
`GenerateResult`, so the language shapes meta info the same for every backend. Knows nothing
of HTTP or threads.
"""

from __future__ import annotations

import re
from typing import Any

from lmnb.runtime.handle import GenerateResult

_REGEX_SPECIAL = re.compile(r"([\\.^$|?*+()\[\]{}])")


def sampling_params(params: Any) -> dict[str, Any]:
    """SGLang's `sampling_params` for a `SamplingParams` (fields at their default are left
    out, so a real SGLang server applies its own)."""
    out: dict[str, Any] = {
        "max_new_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k or -1,
    }
    if params.min_new_tokens:
        out["min_new_tokens"] = params.min_new_tokens
    if params.stop:
        out["stop"] = list(params.stop)
    if params.stop_token_ids:
        out["stop_token_ids"] = list(params.stop_token_ids)
    if params.ignore_eos:
        out["ignore_eos"] = True
    if params.seed is not None:
        out["sampling_seed"] = params.seed
    if params.regex is not None:
        out["regex"] = params.regex
    if params.json_schema is not None:
        out["json_schema"] = params.json_schema
    if params.choices is not None:
        out["regex"] = "(" + "|".join(_REGEX_SPECIAL.sub(r"\\\1", c) for c in params.choices) + ")"
    return out


def logprob_fields(params: Any) -> dict[str, Any]:
    """Top-level logprob fields: output logprobs when asked, prompt logprobs from the
    runtime's `logprob_start_len` S (the runtime scores positions max(S, 1) on)."""
    out: dict[str, Any] = {}
    if params.return_logprobs or params.logprob_start_len is not None:
        out["return_logprob"] = True
    if params.logprob_start_len is not None:
        out["logprob_start_len"] = max(params.logprob_start_len, 1) - 1
    return out


def request_body(prompt: str | list[int], params: Any, **extra: Any) -> dict[str, Any]:
    """A /generate body for one prompt: text (a text backend) or token ids."""
    key = "text" if isinstance(prompt, str) else "input_ids"
    return {key: prompt, "sampling_params": sampling_params(params), **logprob_fields(params),
            **extra}


def values(triples: list[Any] | None) -> list[float]:
    """The logprobs of `[logprob, id, text]` triples (a null logprob scores 0.0)."""
    return [0.0 if t[0] is None else float(t[0]) for t in triples or []]


def finish(meta: dict[str, Any]) -> tuple[str, str | int | None]:
    """(finish reason as a plain string, the stop string or id it matched)."""
    reason = meta.get("finish_reason")
    if isinstance(reason, dict):
        kind = str(reason.get("type") or "stop")
        return kind, reason.get("matched") if kind == "stop" else None
    return (str(reason) if reason else "stop"), None


def to_result(answer: dict[str, Any], tokenizer: Any, prompt_logprobs: bool = False,
              ) -> GenerateResult:
    """The runtime's `GenerateResult` for one answer. A matched stop id that the server left
    at the end of `output_ids` (SGLang keeps EOS there) is dropped, as the runtime does;
    with a tokenizer, `text_ids`/`text_tail` say which ids spell the text."""
    meta = answer.get("meta_info") or {}
    reason, matched = finish(meta)
    ids = [int(t) for t in answer.get("output_ids") or []]
    if isinstance(matched, int) and ids and ids[-1] == matched:
        ids.pop()
    text = answer.get("text") or ""
    text_ids, tail = fit_text(tokenizer, ids, text) if tokenizer is not None else ([], text)
    out_lps = meta.get("output_token_logprobs")
    return GenerateResult(
        text=text, output_ids=ids, finish_reason=reason,
        prompt_tokens=int(meta.get("prompt_tokens") or 0),
        cached_tokens=int(meta.get("cached_tokens") or 0),
        completion_tokens=int(meta.get("completion_tokens") or len(ids)),
        text_ids=text_ids, text_tail=tail,
        prompt_logprobs=values(meta.get("input_token_logprobs"))[1:] if prompt_logprobs
        else None,
        output_logprobs=values(out_lps)[: len(ids)] if out_lps is not None else None,
        matched_stop=matched,
    )


def fit_text(tokenizer: Any, ids: list[int], text: str) -> tuple[list[int], str]:
    """The longest prefix of `ids` that decodes to a prefix of `text`, and the rest of `text`
    (a stop string that ended inside a token leaves its token out of the text)."""
    for k in range(len(ids), -1, -1):
        spelt = tokenizer.decode(ids[:k])
        if text.startswith(spelt):
            return ids[:k], text[len(spelt):]
    return [], text


def delta(before: list[Any] | str, now: list[Any] | str) -> Any:
    """What a streamed event adds: SGLang sends cumulative text (and ids); an event that does
    not extend what came before is taken as incremental."""
    return now[len(before):] if now[: len(before)] == before else now
