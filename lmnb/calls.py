"""The model calls a state makes: generate, score choices, commit a prefix.

Owns turning a backend's results into what a state appends: the text, the token ids that spell
exactly that text, the meta info and token counts. Functions of a backend and token ids only;
knows nothing of states, variables or events (the caller streams chunks through `on_chunk`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmnb.choices import ChoicesMethod
from lmnb.sampling import NUMBER_END, cut_number_end

OnChunk = Callable[[str, int], None]  # (text, number of tokens)


@dataclass(frozen=True)
class Piece:
    text: str
    ids: list[int]
    meta: dict[str, Any]  # what get_meta_info shows
    counts: dict[str, int]  # prompt, cached and completion tokens over the call's requests


def generate(
    backend: Any, prefix: list[int], params: Any, dtype: type | None, on_chunk: OnChunk
) -> Piece:
    """Generate after `prefix`, streaming chunks; a number streams once, whole, at the end
    (its end character is cut off only then)."""
    handle = backend.generate(prefix, params)
    live = dtype not in NUMBER_END
    for chunk in handle:
        if live:
            on_chunk(chunk.text, len(chunk.ids))
    result = handle.result()
    text = cut_number_end(dtype, result.text)
    ids = fit_output_ids(backend.tokenizer, result, text)
    if not live:
        on_chunk(text, len(ids))
    return Piece(text, ids, result.meta, token_counts([result]))


def select(backend: Any, prefix: list[int], choices: Sequence[str], method: ChoicesMethod) -> Piece:
    """Score every choice after `prefix` in one batch of prefill requests; the best one."""
    from lmnb.runtime.params import SamplingParams

    if not prefix:
        raise ValueError("select needs some text before it to condition on")
    choice_ids = [backend.tokenizer.encode(c) for c in choices]
    if not all(choice_ids):
        raise ValueError("select choices must not be empty strings")
    scoring = SamplingParams(max_new_tokens=0, logprob_start_len=len(prefix))
    handles = [backend.generate(prefix + ids, scoring) for ids in choice_ids]
    unconditional = (
        _unconditional_logprobs(backend, choice_ids) if method.needs_unconditional else None
    )
    results = [h.result() for h in handles]
    logprobs = [list(r.prompt_logprobs) for r in results]
    decision = method.decide(logprobs, unconditional)
    meta = {
        "choices": list(choices),
        "scores": decision.scores,
        "normalized_prompt_logprobs": [sum(lp) / len(lp) for lp in logprobs],
        "input_token_logprobs": logprobs,
        "unconditional_token_logprobs": unconditional,
        "prompt_tokens": [r.prompt_tokens for r in results],
        "cached_tokens": [r.cached_tokens for r in results],
        **decision.meta,
    }
    i = decision.index
    return Piece(choices[i], choice_ids[i], meta, token_counts(results))


def _unconditional_logprobs(backend: Any, choice_ids: list[list[int]]) -> list[list[float]]:
    """Logprobs of each choice given nothing (its first token scores 0, as in SGLang)."""
    from lmnb.runtime.params import SamplingParams

    params = SamplingParams(max_new_tokens=0, logprob_start_len=1)
    handles = [backend.generate(ids, params) if len(ids) > 1 else None for ids in choice_ids]
    return [[0.0, *(h.result().prompt_logprobs if h else [])] for h in handles]


def commit_prefix(backend: Any, prefix: list[int]) -> dict[str, int]:
    """Put `prefix` into the radix cache (a prefill, no output); its token counts."""
    from lmnb.runtime.params import SamplingParams

    if not prefix:
        return {}
    return token_counts([backend.generate(prefix, SamplingParams(max_new_tokens=0)).result()])


def token_counts(results: list[Any]) -> dict[str, int]:
    return {
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "cached_tokens": sum(r.cached_tokens for r in results),
        "completion_tokens": sum(r.completion_tokens for r in results),
    }


def fit_output_ids(tokenizer: Any, result: Any, text: str) -> list[int]:
    """The generated ids that spell `text` (`result.text` or a prefix of it) exactly.

    The runtime keeps stop tokens out of `output_ids` but may have generated a stop string
    inside a token: `text_ids` are the ids that decode to a prefix of the text and `text_tail`
    the rest, which is tokenised on its own. A shorter `text` cuts the ids back the same way.
    """
    ids, tail = list(result.text_ids), result.text_tail
    if text != result.text:
        while ids and not text.startswith(tokenizer.decode(ids)):
            ids.pop()
        tail = text[len(tokenizer.decode(ids)) :]
    return ids + (tokenizer.encode(tail) if tail else [])
