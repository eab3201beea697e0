"""What `state.get_meta_info(name)` shows, in SGLang's shape, whichever backend made the call.

Owns turning a backend's raw meta into SGLang's: `finish_reason` a dict (`{"type": "stop",
"matched": <stop string or token id or None>}`, `{"type": "length", "matched": None, "length":
<completion tokens>}`, `{"type": "abort", "matched": None, "message": ...}`), and logprobs as
lists of `(logprob, token_id, text)` tuples: `input_token_logprobs` (prompt tokens from
`logprob_start_len`; the first token of a prompt has logprob None, as in SGLang) and
`output_token_logprobs` (with `return_logprob=True`); for `select`, one such list per choice
(`unconditional_token_logprobs` start with None too). lmnb's extra fields stay
(`forced_positions`, `jump_forward_steps`, `scores`, `input_token_ids`, ...); the raw float
lists (`prompt_logprobs`, `output_logprobs`) are replaced by the tuples. Meta already in SGLang's
shape (an SGLang server's) passes through. Knows nothing of states; functions of plain data.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Triple = tuple[float | None, int | None, str | None]


def finish_reason(reason: Any, matched: Any = None, completion_tokens: int = 0) -> Any:
    """SGLang's finish reason dict from lmnb's word ("stop", "length", "abort")."""
    match reason:
        case dict() | None:
            return reason
        case "length":
            return {"type": "length", "matched": None, "length": completion_tokens}
        case "abort":
            return {"type": "abort", "matched": None, "message": "aborted"}
        case _:
            return {"type": reason, "matched": matched}


def triples(
    logprobs: Sequence[float | None], ids: Sequence[int | None] | None, tokenizer: Any
) -> list[Triple]:
    """`(logprob, token_id, text)` per token; ids (and so texts) None where unknown."""
    ids = list(ids) if ids is not None else [None] * len(logprobs)
    return [(lp, i, _text(tokenizer, i)) for lp, i in zip(logprobs, ids, strict=False)]


def _text(tokenizer: Any, token_id: int | None) -> str | None:
    return tokenizer.decode([token_id]) if tokenizer is not None and token_id is not None else None


def gen_meta(result: Any, prompt_ids: Sequence[int], params: Any, tokenizer: Any) -> dict[str, Any]:
    """A generate call's meta info in SGLang's shape (see the module docstring)."""
    meta = dict(result.meta)
    meta["finish_reason"] = finish_reason(
        meta.get("finish_reason"), meta.get("matched_stop"), meta.get("completion_tokens", 0))
    prompt_lps = meta.pop("prompt_logprobs", None)
    if prompt_lps is not None and "input_token_logprobs" not in meta:
        meta["input_token_logprobs"] = _input_triples(
            prompt_lps, prompt_ids, params.logprob_start_len, tokenizer)
    output_lps = meta.pop("output_logprobs", None)
    if output_lps is not None and "output_token_logprobs" not in meta:
        ids = list(result.output_ids) if tokenizer is not None else None
        meta["output_token_logprobs"] = triples(output_lps, ids, tokenizer)
    return meta


def _input_triples(
    prompt_lps: Sequence[float], prompt_ids: Sequence[int], start: int | None, tokenizer: Any
) -> list[Triple]:
    """The runtime scores prompt tokens from max(start, 1) on; SGLang lists them from `start`,
    the prompt's first token with logprob None."""
    start = start or 0
    lps: list[float | None] = [None, *prompt_lps] if start == 0 else list(prompt_lps)
    ids = list(prompt_ids[start:]) if prompt_ids else None
    return triples(lps, ids, tokenizer)


def select_meta(meta: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """A `select`'s meta info in SGLang's shape: per choice, `input_token_logprobs` and
    `unconditional_token_logprobs` as triples (over `input_token_ids` where the backend gave
    them), `output_token_logprobs` empty lists (scoring generates nothing)."""
    out = dict(meta)
    logprobs = meta.get("input_token_logprobs") or []
    if not _is_raw(logprobs):
        return out
    ids = meta.get("input_token_ids") or [None] * len(logprobs)
    out["input_token_logprobs"] = [triples(lp, i, tokenizer) for lp, i in zip(logprobs, ids)]
    out.setdefault("output_token_logprobs", [[] for _ in logprobs])
    unconditional = meta.get("unconditional_token_logprobs")
    if unconditional is not None and _is_raw(unconditional):
        out["unconditional_token_logprobs"] = [
            triples([None, *lp[1:]], i, tokenizer) for lp, i in zip(unconditional, ids)]
    return out


def _is_raw(per_choice: Sequence[Any]) -> bool:
    """Whether per-choice logprobs are plain floats (lmnb's raw form), not triples yet."""
    return any(lps and not isinstance(lps[0], list | tuple) for lps in per_choice)
