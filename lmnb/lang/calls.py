"""The model calls a state makes: generate, score choices, commit a prefix.

Owns turning a backend's results into what a state appends: the text, the token ids that spell
exactly that text, the meta info (in SGLang's shape, by `meta`) and token counts. Functions of a
backend and a `Prompt` only; knows nothing of states, variables or events (the caller streams
chunks through `on_chunk`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from lmnb.lang import meta as meta_info
from lmnb.lang.backend.base import Prompt, token_counts
from lmnb.lang.choices import ChoicesMethod
from lmnb.lang.sampling import NUMBER_END, cut_number_end

OnChunk = Callable[[str, int], None]  # (text, number of tokens)


@dataclass(frozen=True)
class Piece:
    text: str
    ids: list[int]
    meta: dict[str, Any]  # what get_meta_info shows
    counts: dict[str, int]  # prompt, cached and completion tokens over the call's requests


def generate(
    backend: Any, prompt: Prompt, params: Any, dtype: type | None, on_chunk: OnChunk
) -> Piece:
    """Generate after `prompt`, streaming chunks; a number streams once, whole, at the end
    (its end character is cut off only then)."""
    handle = backend.generate(prompt, params)
    live = dtype not in NUMBER_END
    for chunk in handle:
        if live:
            on_chunk(chunk.text, len(chunk.ids))
    result = handle.result()
    text = cut_number_end(dtype, result.text)
    ids = fit_output_ids(backend.tokenizer, result, text)
    if not live:
        on_chunk(text, len(ids))
    meta = meta_info.gen_meta(result, prompt.ids, params, backend.tokenizer)
    return Piece(text, ids, meta, token_counts([result]))


def select(backend: Any, prompt: Prompt, choices: Sequence[str], method: ChoicesMethod) -> Piece:
    """The backend's pick among `choices` after `prompt` (token backends score each by its
    prompt logprobs in one batch of prefill requests)."""
    choice = backend.select(prompt, choices, method)
    meta = meta_info.select_meta(choice.meta, backend.tokenizer)
    return Piece(choices[choice.index], list(choice.ids), meta, choice.counts)


def commit_prefix(backend: Any, prompt: Prompt) -> dict[str, int]:
    """Put the prompt into the backend's cache before forks read it; its token counts."""
    return backend.commit(prompt)


def fit_output_ids(tokenizer: Any, result: Any, text: str) -> list[int]:
    """The generated ids that spell `text` (`result.text` or a prefix of it) exactly.

    The runtime keeps stop tokens out of `output_ids` but may have generated a stop string
    inside a token: `text_ids` are the ids that decode to a prefix of the text and `text_tail`
    the rest, which is tokenised on its own. A shorter `text` cuts the ids back the same way.
    """
    if tokenizer is None:  # a text backend: the state keeps no ids
        return []
    ids, tail = list(result.text_ids), result.text_tail
    if text != result.text:
        while ids and not text.startswith(tokenizer.decode(ids)):
            ids.pop()
        tail = text[len(tokenizer.decode(ids)) :]
    return ids + (tokenizer.encode(tail) if tail else [])
